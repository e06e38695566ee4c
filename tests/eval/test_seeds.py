import json

import pytest

from dpq.eval.seeds import compare_seeds, summarize, to_markdown
from dpq.io.checkpoint import is_checkpoint
from dpq.io.data import data_dir

needs_wikitext = pytest.mark.skipif(data_dir() is None, reason="no local data dir (set DPQ_DATA_DIR)")


def _comparison(seed, ppls, *, windows="16/148", group_size=128, skip_first=0, model="m", averages=None):
    calib = {"source": "wikitext2", "samples": 32, "seq_len": 2048, "seed": seed}
    if skip_first is not None:
        calib["skip_first"] = skip_first
    results = {}
    for method, ppl in ppls.items():
        avg = (averages or {}).get(method)
        results[method] = {
            "method": method, "wikitext2_ppl": ppl, "windows": windows, "average": avg,
            "tasks": {"piqa": {"acc": avg}} if avg is not None else {},
            "settings": {"ppl": "wikitext2", "seq_len": 2048, "max_windows": 16, "limit": 200, "num_fewshot": 0},
        }
    return {"model": model, "results": results, "calibration": {**calib, "fingerprint": f"f{seed}"},
            "quant_kwargs": {"group_size": group_size, "fp8_max": 240.0, "calib": calib}}


def test_summary_mean_spread_and_order_per_seed():
    s = summarize([
        _comparison(0, {"bf16": 20.0, "naive-w4a8": 30.0, "dpq-gar": 28.0}),
        _comparison(1, {"naive-w4a8": 29.0, "dpq-gar": 29.5}),
        _comparison(2, {"naive-w4a8": 31.0, "dpq-gar": 28.5}),
    ])
    assert s["seeds"] == [0, 1, 2] and s["methods"] == ["bf16", "naive-w4a8", "dpq-gar"]
    naive = s["metrics"]["naive-w4a8"]["wikitext2_ppl"]
    assert naive["values"] == {"0": 30.0, "1": 29.0, "2": 31.0}
    assert naive["mean"] == pytest.approx(30.0) and naive["spread"] == pytest.approx(2.0)
    assert naive["sd"] == pytest.approx(1.0) and naive["n"] == 3
    assert s["order"] == {"0": ["dpq-gar", "naive-w4a8"], "1": ["naive-w4a8", "dpq-gar"],
                          "2": ["dpq-gar", "naive-w4a8"]}
    assert s["complete"] is True  # the float model needs no seed
    assert "seed" not in s["quant_kwargs"]["calib"]
    table = to_markdown(s)
    assert "| naive-w4a8 | 30.000 | 29.000 | 31.000 | 30.000 | 2.000 |" in table
    assert "| bf16 | 20.000 | - | - | 20.000 | (no seed) |" in table
    assert "seed 1, perplexity best first: naive-w4a8 < dpq-gar" in table
    json.dumps(s)


def test_summary_of_averages_and_incomplete_grids():
    s = summarize([
        _comparison(0, {"dpq": 30.0, "dpq-gar": 28.0}, averages={"dpq": 0.40, "dpq-gar": 0.42}),
        _comparison(3, {"dpq-gar": 28.4}, averages={"dpq-gar": 0.44}),
    ])
    assert s["metrics"]["dpq-gar"]["average"]["spread"] == pytest.approx(0.02)
    assert s["complete"] is False  # dpq lacks seed 3
    table = to_markdown(s)
    assert "| dpq-gar | 42.0 | 44.0 | 43.0 | 2.0 |" in table
    assert "| dpq | 30.000 | - | 30.000 | - |" in table and "incomplete" in table


def test_files_from_before_skip_first_match_new_ones_and_duplicates_must_agree():
    old = _comparison(0, {"dpq-gar": 28.0}, skip_first=None)
    s = summarize([old, _comparison(1, {"dpq-gar": 29.0}), _comparison(0, {"dpq-gar": 28.0})])
    assert s["metrics"]["dpq-gar"]["wikitext2_ppl"]["n"] == 2
    with pytest.raises(ValueError, match="two different wikitext2_ppl for dpq-gar with seed 0"):
        summarize([old, _comparison(0, {"dpq-gar": 28.5})])


@pytest.mark.parametrize("other, match", [
    (_comparison(1, {"dpq": 1.0}, group_size=64), "only the calibration seed may differ"),
    (_comparison(1, {"dpq": 1.0}, skip_first=1), "only the calibration seed may differ"),
    (_comparison(1, {"dpq": 1.0}, windows="148/148"), "same evaluation options"),
    (_comparison(1, {"dpq": 1.0}, model="other"), "different models"),
])
def test_summary_refuses_comparisons_that_differ_in_more_than_the_seed(other, match):
    with pytest.raises(ValueError, match=match):
        summarize([_comparison(0, {"dpq": 2.0}), other])
    with pytest.raises(ValueError, match="no comparisons"):
        summarize([])


@pytest.mark.parametrize("seeds, methods, match", [
    ([], ["dpq"], "no seeds"),
    ([0, 0], ["dpq"], "distinct non-negative"),
    ([-1], ["dpq"], "distinct non-negative"),
    ([0, 1], ["bf16"], "at least one quantization method"),
    ([0, 1], ["dpq", "awq"], "unknown method"),
])
def test_compare_seeds_refuses_bad_input_before_loading(seeds, methods, match):
    with pytest.raises(ValueError, match=match):
        compare_seeds("tiny", methods, seeds, loader=lambda name: pytest.fail("loaded"))


@needs_wikitext
def test_compare_seeds_calibrates_each_seed_and_evaluates_the_float_model_once(tiny_llama_dir, tmp_path):
    import torch

    from dpq.config import CalibSpec
    from dpq.models.loading import load_float_model

    loads, calls = [], []

    def loader(name):
        loads.append(name)
        m, t, src = load_float_model(name)
        return m, t, src.name

    def fake_quantize(m, tok, config, calib=None, device="cpu", progress=True):
        calls.append((config.calib.seed, calib.clone()))
        with torch.no_grad():
            m.lm_head.weight.mul_(1 + 0.05 * (config.calib.seed + 1))  # each seed lands elsewhere
        return m

    qk = {"group_size": 32, "calib": CalibSpec(samples=2, seq_len=32)}
    seen = []
    out = compare_seeds(str(tiny_llama_dir), ["bf16", "rtn-w4a8"], [0, 2], qk, {"seq_len": 32, "max_windows": 2},
                        quantize_fn=fake_quantize, loader=loader, progress=False, on_result=seen.append)
    assert len(loads) == 1
    assert [c[0] for c in calls] == [0, 2] and not torch.equal(calls[0][1], calls[1][1])
    assert list(out["runs"][0]["results"]) == ["bf16", "rtn-w4a8"] and list(out["runs"][1]["results"]) == ["rtn-w4a8"]
    assert [r["calibration"]["seed"] for r in out["runs"]] == [0, 2]
    vals = out["metrics"]["rtn-w4a8"]["wikitext2_ppl"]["values"]
    assert set(vals) == {"0", "2"} and vals["0"] != vals["2"]
    assert out["complete"] is True and len(seen) == 3 and seen[-1]["seeds"] == [0, 2]


@needs_wikitext
def test_cli_seeds_writes_summary_and_per_seed_checkpoints(tiny_llama_dir, tmp_path, capsys):
    from dpq.cli import main

    args = ["compare", str(tiny_llama_dir), "--methods", "rtn-w4a8", "--seeds", "0,1", "--calib-samples", "2",
            "--calib-seq-len", "32", "--group-size", "32", "--seq-len", "32", "--max-windows", "2",
            "--save-dir", str(tmp_path / "grid"), "--json", str(tmp_path / "s.json"),
            "--markdown", str(tmp_path / "s.md"), "--plot", str(tmp_path / "s.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| rtn-w4a8 |" in out and "spread" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["complete"] is True and s["seeds"] == [0, 1] and len(s["runs"]) == 2
    assert all(is_checkpoint(tmp_path / "grid" / f"seed-{k}" / "rtn-w4a8") for k in (0, 1))
    fingerprints = {r["calibration"]["fingerprint"] for r in s["runs"]}
    assert len(fingerprints) == 2  # two seeds, two sets of calibration tokens
    assert (tmp_path / "s.png").stat().st_size > 0 and "seed 1" in (tmp_path / "s.md").read_text()
    # a rerun loads each seed's checkpoint and measures the same
    assert main(args[:-6] + ["--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert all("load_s" in r["results"]["rtn-w4a8"]["settings"]["timings"] for r in again["runs"])
    assert again["metrics"]["rtn-w4a8"]["wikitext2_ppl"]["values"] == pytest.approx(
        s["metrics"]["rtn-w4a8"]["wikitext2_ppl"]["values"])

    assert main(args[:4] + ["--seeds", "0,x"] + args[6:]) == 2
    assert "comma-separated integers" in capsys.readouterr().err
    assert main(args + ["--seed", "3"]) == 2  # --seed and --seeds together: argparse's one-line error
    assert "not allowed with argument" in capsys.readouterr().err
