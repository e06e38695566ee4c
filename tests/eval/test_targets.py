"""dpq.eval.targets: the thresholds file, the paper's targets on result rows, and the live floors (slow)."""

import copy

import pytest
import torch

from dpq.eval import targets


def test_the_targets_file_parses_and_every_floor_is_set():
    data = targets.load()
    assert data["paper"]["max_ppl_increase_ratio"] == 1.1 and data["paper"]["max_avg_acc_change_points"] == 1.0
    floors = targets.recovery_targets()
    assert floors, "no [[recovery]] target in targets.toml"
    for t in floors:
        assert 1.0 < t.measured <= t.max_ppl_ratio, t  # a floor above what was measured, never unset


def _row(model, method, ppl, f=448.0, avg=None, delta=None, se=None):
    f = f if method in targets.W4A8 else None
    return dict(model=model, method=method, fp8_max=f, ppl_by_windows={"16/142": ppl}, average=avg,
                avg_delta_paired=delta, avg_delta_stderr=se, limit=200)


def test_paper_targets_hold_fail_and_are_not_measured_when_a_method_is_missing():
    rows = [_row("m", "bf16", 20.0), _row("m", "gptq-w4a16", 24.0), _row("m", "dpq-gar", 24.2, delta=-0.005, se=0.008),
            _row("m", "naive-w4a8", 25.0), _row("m", "rtn-w4a8", 30.0)]
    (r,) = targets.check_paper(rows)
    assert r["ordering"]["holds"] and r["ppl_ratio"]["value"] == pytest.approx(1.05) and r["ppl_ratio"]["holds"]
    assert r["accuracy"]["holds"] and r["accuracy"]["delta_points"] == pytest.approx(-0.5)
    rows[2] = _row("m", "dpq-gar", 26.0, delta=-0.02, se=0.008)  # worse than naive, ratio 1.5, -2 points
    (r,) = targets.check_paper(rows)
    assert r["ordering"]["holds"] is False and r["ppl_ratio"]["holds"] is False and r["accuracy"]["holds"] is False
    (r,) = targets.check_paper([x for x in rows if x["method"] != "gptq-w4a16"])
    assert r["ppl_ratio"]["holds"] is None and r["ppl_ratio"]["value"] is None  # not measured, never a pass


def test_paper_thresholds_come_from_the_file():
    rows = [_row("m", "bf16", 20.0), _row("m", "gptq-w4a16", 24.0), _row("m", "dpq-gar", 24.2),
            _row("m", "naive-w4a8", 25.0), _row("m", "rtn-w4a8", 30.0)]
    strict = {**targets.load()["paper"], "max_ppl_increase_ratio": 1.0}
    assert targets.check_paper(rows)[0]["ppl_ratio"]["holds"] is True
    assert targets.check_paper(rows, strict)[0]["ppl_ratio"]["holds"] is False


@pytest.mark.slow
@pytest.mark.parametrize("target", targets.recovery_targets(), ids=lambda t: t.name)
def test_live_recovery_floor(target, smollm2, smollm2_float_ppl):
    assert target.model == "smollm2-135m"  # the bundled model the fixture loads
    model, tok = smollm2
    res = targets.measure_recovery(target, copy.deepcopy(model), tok, smollm2_float_ppl(target))
    assert res["holds"], f"{target.name}: ppl ratio {res['ratio']:.4f} above the floor {target.max_ppl_ratio} ({res})"
    assert res["linears"] == 30 * 7 and res["mean_rel_error"] < 0.2  # every Linear of the real model quantized
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = res["model"].generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0])  # the quantized model still answers


@pytest.fixture(scope="module")
def smollm2_float_ppl(smollm2):
    from dpq.eval.perplexity import wikitext2_perplexity

    seen = {}

    def get(t):
        key = (t.window_len, t.windows)
        if key not in seen:
            seen[key] = wikitext2_perplexity(smollm2[0], smollm2[1], t.window_len, t.windows, progress=False).ppl
        return seen[key]

    return get
