"""benchmarks/gpu_suite.py --dry-run: every section's plumbing on the CPU, with gguf and lm-eval unimportable
(the GPU machine's image has neither), and the suite's reading of its numbers."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("gpu_suite_report", ROOT / "benchmarks" / "gpu_suite_report.py")
R = importlib.util.module_from_spec(spec)
spec.loader.exec_module(R)

BLOCKED = ("gguf", "lm_eval", "compressed_tensors", "datasets")


def test_dry_run_writes_every_section_without_gguf_or_lm_eval(tmp_path):
    pytest.importorskip("triton")
    code = ("import sys, runpy\n"
            + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)  # any import of these fails
            + f"sys.argv = ['benchmarks/gpu_suite.py', '--dry-run', '--out', {str(tmp_path)!r}]\n"
            "runpy.run_path('benchmarks/gpu_suite.py', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the suite sets it itself
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["gpu_suite.json", "gpu_suite.md", "pytest.log"]  # the device tool returns <= 8 files
    res = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert res["meta"]["dry_run"] is True and res["meta"]["device"].startswith("cpu")
    sec = res["sections"]
    assert list(sec) == ["env", "tests", "gemm", "e2e", "quantize"]
    assert not [name for name, s in sec.items() if "error" in s or "skipped" in s]
    variants = {(r["M"], r["variant"]) for r in sec["gemm"]["rows"]}
    assert {(1, "w4a8_fused"), (1, "w4a8_separate"), (64, "w4a8_fused"), (64, "w4a8_dequant"), (1, "bf16")} <= variants
    assert all(r["rel_err_vs_reference"] < 1e-2 for r in sec["gemm"]["rows"] if r["variant"].startswith("w4a8"))
    assert set(sec["e2e"]["ratios"]) >= {"decode_b1", "decode_decoder_only_b1", "prefill", "prefill_fused_path"}
    assert sec["quantize"]["linears"] == 14 and sec["quantize"]["logits_rel_diff_triton_vs_reference"] < 1e-2
    assert all(t["holds"] is None for t in res["targets"].values())  # a dry run measures nothing
    assert "# dpq GPU suite: cpu" in (tmp_path / "gpu_suite.md").read_text()


def test_refuses_without_a_gpu_unless_dry_run():
    pytest.importorskip("triton")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--out", "/nonexistent"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 2 and "--dry-run" in proc.stderr


def _row(layer, m, variant, ms, rule=False, vs_bf16=1.0, vs_fp8=1.0):
    return dict(layer=layer, M=m, variant=variant, ms=ms, rule_path=rule, vs_bf16=vs_bf16, vs_fp8=vs_fp8)


def test_threshold_is_where_dequant_wins_from_then_on():
    rows = [_row(layer, m, "w4a8_fused", 1.0) for layer in ("o", "down") for m in (256, 512, 1024, 2048)]
    times = {(256, "o"): 2.0, (256, "down"): 0.5, (512, "o"): 1.5, (512, "down"): 1.2, (1024, "o"): 0.9,
             (1024, "down"): 1.1, (2048, "o"): 0.5, (2048, "down"): 0.6}
    rows += [_row(layer, m, "w4a8_dequant", t) for (m, layer), t in times.items()]
    th = R.suggest_threshold(rows, [256, 512, 1024, 2048])
    assert th["suggested_LARGE_M_THRESHOLD"] == 2048  # 1024 loses on "down"; 512 wins on both but 1024 does not
    assert th["fused_over_dequant"][512]["o"] == pytest.approx(1 / 1.5)
    assert R.suggest_threshold([_row("o", 256, "w4a8_fused", 1.0), _row("o", 256, "w4a8_dequant", 2.0)],
                               [256])["suggested_LARGE_M_THRESHOLD"] is None


def test_targets_use_the_rule_path_and_say_when_nothing_was_measured():
    rows = [_row("o", 1, "w4a8_fused", 1.0, rule=True, vs_bf16=3.2, vs_fp8=1.4),
            _row("o", 1, "w4a8_separate", 1.0, vs_bf16=9.0, vs_fp8=9.0),
            _row("o", 4096, "w4a8_dequant", 1.0, rule=True, vs_bf16=1.7, vs_fp8=0.95)]
    res = {"meta": {"dry_run": False}, "sections": {"gemm": {"rows": rows}, "e2e": {"ratios": {"decode_b1": 2.0}}}}
    import gpu_suite  # noqa: PLC0415

    t = R.targets(res, gpu_suite.TARGETS)
    assert t["small_m_vs_bf16"]["holds"] is True and t["small_m_vs_fp8"]["holds"] is False  # 1.4 < 1.5
    assert t["large_m_vs_fp8"]["holds"] is True and t["large_m_vs_bf16"]["holds"] is True
    assert t["decode_b1_vs_bf16"]["holds"] is False and t["prefill_vs_bf16"]["holds"] is None


def test_probe_dry_run_runs_its_sections_without_gguf_or_lm_eval(tmp_path):
    pytest.importorskip("triton")
    code = ("import sys, runpy\n"
            + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED)
            + f"sys.argv = ['benchmarks/gpu_probe.py', '--dry-run', '--out', {str(tmp_path)!r}, '--skip', 'decode,overhead']\n"
            "runpy.run_path('benchmarks/gpu_probe.py', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_probe.json").read_text())
    assert res["meta"]["device"].startswith("cpu") and {"command", "commit", "machine"} <= set(res["meta"])
    outputs = res["accuracy"]["3"]["outputs_vs_fp64"]
    assert {"reference_cpu", "fused_prologue", "dequant", "small_swap", "small_gemv"} <= set(outputs)
    assert all(r.get("outside_one_bf16") == 0 for r in outputs.values()), outputs  # exact on the CPU
    assert {r["variant"] for r in res["sweep"] if "ms" in r} >= {"bf16", "fused_autotuned"}
