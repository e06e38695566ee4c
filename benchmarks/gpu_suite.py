"""Every GPU number dpq needs, in one call: the gpu-marked tests, a GEMM subset, decode and prefill
of an 8-layer Llama-3-8B-shaped model, and a `--device cuda` quantize of a SmolLM2-shaped model.

    PYTHONPATH=src python3 benchmarks/gpu_suite.py --out $OUT                # a CUDA GPU with FP8 (SM89+)
    PYTHONPATH=src python3 benchmarks/gpu_suite.py --dry-run --out /tmp/gs   # the plumbing, on the CPU

Sections, in order, each timed and isolated (one that fails records its error, the next runs):
  env       device, versions, measured ceilings (copy GB/s, FP8 and BF16 matmul TFLOP/s)
  tests     pytest -m gpu tests/kernels (log in pytest.log)
  gemm      Llama-3-8B shapes at M = 1, 16, 256, 4096 against BF16, FP8 (_scaled_mm) and W4A16, and
            the fused and dequantize paths over M = 256 .. 4096 to place LARGE_M_THRESHOLD
  e2e       decode at batch 1 and 8 (CUDA graphs), 2048-token prefill, BF16 against W4A8
  quantize  dpq-gar on a SmolLM2-135M-shaped model with random weights and random calibration ids
Then the issue's speed targets are checked against what was measured. Writes $OUT/gpu_suite.json
(meta with the device name) and $OUT/gpu_suite.md, rewritten after every section, and pytest.log.
Needs torch, triton and transformers only (no gguf, lm-eval, network or model download); the models
are built from configs with random weights. --dry-run: tiny shapes on the CPU, Triton's
interpreter and the reference paths, no CUDA graphs; its numbers measure nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEMM_MS, SWEEP_MS = [1, 16, 256, 4096], [256, 512, 1024, 2048, 4096]
DRY_GEMM_MS, DRY_SWEEP_MS = [1], [64]
TARGETS = {"small_m_vs_bf16": 3.0, "small_m_vs_fp8": 1.5, "large_m_vs_fp8": 0.9, "large_m_vs_bf16": 1.6,
           "decode_b1_vs_bf16": 2.5, "prefill_vs_bf16": 1.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_suite.json, gpu_suite.md and pytest.log")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton interpreter)")
    p.add_argument("--skip", default="", help="comma list of sections to leave out: tests,gemm,e2e,quantize")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD, if any)")
    return p.parse_args(argv)


def _load(name):
    """benchmarks/<name>.py as a module (the suite reuses gemm.py and e2e.py)."""
    spec = importlib.util.spec_from_file_location(f"dpq_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Suite:
    """Runs the sections against a time budget and keeps the JSON on disk up to date."""

    def __init__(self, args):
        import torch

        self.args, self.t0, self.out = args, time.perf_counter(), Path(args.out)
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.result = {"meta": {}, "sections": {}, "targets": {}}

    @staticmethod
    def load(name):
        return _load(name)

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def run(self, name, fn):
        if name in self.args.skip.split(","):
            self.result["sections"][name] = {"skipped": "--skip"}
        elif self.left() <= 0:
            self.result["sections"][name] = {"skipped": f"time budget of {self.args.budget_s:.0f} s spent"}
        else:
            t = time.perf_counter()
            try:
                self.result["sections"][name] = fn(self)
            except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
                self.result["sections"][name] = {"error": f"{type(e).__name__}: {e}",
                                                 "traceback": traceback.format_exc()[-4000:]}
            self.result["sections"][name]["seconds"] = round(time.perf_counter() - t, 1)
            print(f"[{time.perf_counter() - self.t0:6.0f} s] {name}: "
                  f"{self.result['sections'][name].get('error', 'done')}", flush=True)
        self.write()

    def write(self):
        from gpu_suite_report import markdown  # noqa: PLC0415 - beside this file

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_suite.json").write_text(json.dumps(self.result, indent=1, default=str))
        (self.out / "gpu_suite.md").write_text(markdown(self.result))


def env(s: Suite) -> dict:
    import torch
    import transformers
    import triton

    G = _load("gemm")
    res = dict(torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__,
               python=platform.python_version())
    if s.dry:
        return res
    props = torch.cuda.get_device_properties(s.device)
    timer = G.Timer(True, 20)
    ceil = G.ceilings(s.device, timer)
    a = torch.randn(8192, 8192, device=s.device, dtype=torch.bfloat16)
    ceil["bf16_tflops"] = 2 * 8192**3 / timer(lambda i: a @ a, 1) / 1e9
    return {**res, "capability": list(torch.cuda.get_device_capability(s.device)), "sms": props.multi_processor_count,
            "l2_bytes": props.L2_cache_size, "memory_gib": props.total_memory / 2**30, "ceilings": ceil}


def tests(s: Suite) -> dict:
    env_vars = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" or s.dry}
    env_vars["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env_vars.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/kernels"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env_vars, capture_output=True, text=True,
                              timeout=max(30.0, min(240.0, s.left())))
        log, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        log, rc = f"{e.stdout or ''}{e.stderr or ''}\nTIMEOUT after {e.timeout:.0f} s", "timeout"
    (s.out / "pytest.log").write_text(log if isinstance(log, str) else log.decode())
    summary = [line for line in log.splitlines() if " passed" in line or " failed" in line or " skipped" in line
               or "deselected" in line or "error" in line.lower()]
    res = {"command": " ".join(cmd[1:]), "returncode": rc, "summary": summary[-1] if summary else log[-300:]}
    if rc not in (0, 5):  # 5: nothing collected (CPU: every gpu test skipped or deselected)
        res["error"] = f"pytest exit code {rc}: {res['summary']} (see pytest.log)"
    return res


def gemm(s: Suite) -> dict:
    import torch

    G = _load("gemm")
    cuda = not s.dry
    timer = G.Timer(True, 50) if cuda else _once
    shapes = [("llama3-8b", *x) for x in G.SHAPES["llama3-8b"]] if cuda else [("tiny", "x", 64, 256)]
    l2 = torch.cuda.get_device_properties(s.device).L2_cache_size if cuda else 1 << 20
    ceil = s.result["sections"].get("env", {}).get("ceilings") or G.ceilings(s.device, timer)
    main_ms, sweep_ms = (GEMM_MS, SWEEP_MS) if cuda else (DRY_GEMM_MS, DRY_SWEEP_MS)
    rows, skipped = [], []
    for m in sorted(set(main_ms) | set(sweep_ms)):
        variants = {"w4a8_fused"} | ({"w4a8_separate"} if m in main_ms and m <= 256 else set())
        variants |= {"w4a8_small"} if m <= 16 else set()
        variants |= {"w4a8_dequant"} if m in sweep_ms else set()
        for model, layer, n, k in shapes:
            if s.left() <= 0:
                skipped.append(f"{layer} M={m}")
                continue
            rows += G.bench_shape(model, layer, n, k, m, s.device, timer, ceil, l2, variants)
            torch.cuda.empty_cache() if cuda else None
    from gpu_suite_report import suggest_threshold  # noqa: PLC0415

    from dpq.kernels.triton_w4a8 import _w4a8_gemm_tuned  # noqa: PLC0415

    chosen = {str(key): str(cfg) for key, cfg in _w4a8_gemm_tuned.cache.items()}  # what autotuning picked
    return {"rows": rows, "skipped_for_time": skipped, "table": G.table(rows), "autotune_choices": chosen,
            "threshold": suggest_threshold(rows, sweep_ms)}


def _once(fn, n_sets: int) -> float:
    """The dry run's timer: one call, wall clock, in ms (the interpreter is slow; nothing is measured)."""
    t = time.perf_counter()
    fn(0)
    return (time.perf_counter() - t) * 1e3


def run_quantize(model, calib, device: str):
    """The suite's one call into dpq's quantize API (kept apart: the driver and API are being reworked).

    model: a float transformers model on the CPU; calib: [samples, tokens] token ids. Returns the summary.
    """
    import dpq

    spec = dpq.CalibSpec(samples=int(calib.shape[0]), seq_len=int(calib.shape[1]))
    config = dpq.QuantConfig.for_method("dpq-gar", calib=spec)
    return dpq.quantize(model, None, config, calib=calib, device=device, progress=False).summary


def smollm2_config(tiny: bool):
    """SmolLM2-135M's architecture (its config.json), or a 2-layer miniature for the dry run."""
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=True)
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def quantize(s: Suite) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from dpq.kernels import ops

    torch.manual_seed(0)
    cfg = smollm2_config(tiny=s.dry)
    model = LlamaForCausalLM(cfg).eval()
    samples, seq = (2, 16) if s.dry else (8, 256)
    calib = torch.randint(0, cfg.vocab_size, (samples, seq))
    t = time.perf_counter()
    summary = run_quantize(model, calib, str(s.device))
    seconds = time.perf_counter() - t
    errs = [r.rel_error for r in summary.linears]
    ids = torch.randint(0, cfg.vocab_size, (1, 8) if s.dry else (2, 64), device=s.device)
    model.to(s.device)
    logits = {}
    for backend in ("triton", "reference"):
        ops.set_backend(backend)
        with torch.no_grad():
            logits[backend] = model(ids).logits.float()
    ops.set_backend(None)
    diff = float((logits["triton"] - logits["reference"]).norm() / logits["reference"].norm())
    return {"model": "SmolLM2-135M-shaped, random weights" + (" (tiny)" if s.dry else ""), "method": "dpq-gar",
            "calib_ids": [samples, seq], "quantize_seconds": seconds, "linears": len(errs),
            "mean_rel_error": statistics.fmean(errs) if errs else None,
            "peak_device_mb": getattr(summary, "peak_device_mb", None),
            "logits_rel_diff_triton_vs_reference": diff}


def _git_commit() -> str:
    try:  # the GPU machine gets the working tree without .git, and may lack git
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown (pass --commit)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (pass --commit)"


def check_targets(result: dict) -> dict:
    from gpu_suite_report import targets  # noqa: PLC0415

    return targets(result, TARGETS)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel module is imported
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch

    if not args.dry_run and not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)):
        print("benchmarks/gpu_suite.py needs a CUDA GPU with FP8 (SM89+); none found. --dry-run runs its "
              "plumbing on the CPU.", file=sys.stderr)
        return 2
    from gpu_suite_e2e import e2e  # noqa: PLC0415 - beside this file

    s = Suite(args)
    commit = args.commit or _git_commit()
    s.result["meta"] = dict(
        command="python3 " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        commit=commit, dry_run=args.dry_run, budget_s=args.budget_s,
        device=torch.cuda.get_device_name() if not args.dry_run else "cpu (dry run: TRITON_INTERPRET=1, not a measurement)",
        machine=dict(platform=platform.platform(), cpu_count=os.cpu_count()))
    for name, fn in (("env", env), ("tests", tests), ("gemm", gemm), ("e2e", e2e), ("quantize", quantize)):
        s.run(name, fn)
    s.result["targets"] = check_targets(s.result)
    s.result["meta"]["total_seconds"] = round(time.perf_counter() - s.t0, 1)
    s.write()
    print((s.out / "gpu_suite.md").read_text())
    failed = [n for n, sec in s.result["sections"].items() if "error" in sec]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
