"""The quantization summary table and its note on Linears dominated by a few tokens."""

from rich.console import Console

from dpq.models.driver import CONCENTRATED_SHARE, LinearReport, QuantSummary
from dpq.report import concentration_note, print_summary


def _summary(method, shares, fp8=True):
    s = QuantSummary(method, seconds=1.0, calib_tokens=256)
    for i, share in enumerate(shares):
        s.linears.append(LinearReport(f"model.layers.{i}.mlp.down_proj", (8, 16), 0.05, 0.1, 2.0 if fp8 else None, share))
    return s


def _printed(summary) -> str:
    console = Console(record=True, width=200)
    print_summary(summary, "tiny", console=console)
    return console.export_text()


def test_concentrated_uses_the_threshold():
    s = _summary("dpq-gar", [0.01, CONCENTRATED_SHARE, 0.56, None])
    assert [r.name for r in s.concentrated()] == ["model.layers.2.mlp.down_proj"]
    assert [r.name for r in s.concentrated(0.005)] == [f"model.layers.{i}.mlp.down_proj" for i in range(3)]


def test_note_names_the_layers_and_the_fix():
    text = _printed(_summary("dpq-gar", [0.01, 0.56, 0.40]))
    assert "model.layers.1.mlp.down_proj (56%), model.layers.2.mlp.down_proj (40%)" in text
    assert "--method rtn-w4a8" in text and "FP8 input scale" in text
    assert "--ignore model.layers.1.mlp.down_proj model.layers.2.mlp.down_proj" in text
    assert "layers.0.mlp.down_proj (" not in text


def test_no_note_without_dominant_tokens_or_calibration():
    assert "note:" not in _printed(_summary("dpq-gar", [0.01, 0.02]))
    assert "note:" not in _printed(_summary("rtn-w4a16", [None, None]))


def test_note_fits_the_method():
    flagged = _summary("gptq-w4a16", [0.5], fp8=False).linears
    w4a16 = concentration_note("gptq-w4a16", flagged)
    assert "--method rtn-w4a16" in w4a16 and "FP8" not in w4a16
    rtn = concentration_note("rtn-w4a8", _summary("rtn-w4a8", [0.5]).linears)
    assert "--method" not in rtn and "FP8 input scale" in rtn and "--ignore" in rtn
