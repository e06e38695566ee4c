"""The quantization summary table and its note on Linears dominated by a few tokens."""

from rich.console import Console

from dpq.models.driver import CONCENTRATED_SHARE, LinearReport, QuantSummary, concentrated
from dpq.report import concentration_note, print_info, print_summary


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
    w4a16 = concentration_note("gptq-w4a16", {"model.layers.0.mlp.down_proj": 0.5}, fp8=False)
    assert "--method rtn-w4a16" in w4a16 and "FP8" not in w4a16
    rtn = concentration_note("rtn-w4a8", {"model.layers.0.mlp.down_proj": 0.5}, fp8=True)
    assert "--method" not in rtn and "FP8 input scale" in rtn and "--ignore" in rtn
    plus = concentration_note("dpq-gar-plus", {"model.layers.0.mlp.down_proj": 0.5}, fp8=True)
    assert "float model's outputs" in plus and "--method" not in plus
    assert "--ignore model.layers.0.mlp.down_proj" in plus and "FP8 input scale" in plus


def test_stored_shares_follow_the_same_rule():
    s = _summary("dpq-gar", [0.01, CONCENTRATED_SHARE, 0.56, None])
    shares = s.top_token_shares()
    assert list(shares) == [f"model.layers.{i}.mlp.down_proj" for i in range(3)]  # None (no calibration) left out
    assert list(concentrated(shares)) == [r.name for r in s.concentrated()]
    assert concentrated(None) == {} and concentrated({}) == {}


def test_info_prints_the_note_for_a_flagged_checkpoint():
    settings = {"weight": {"symmetric": False, "group_size": 128, "scale_dtype": "bfloat16"},
                "act": {"method": "maxabs"}, "fp8": {"fp8_max": 448.0},
                "solver": {"algorithm": "gptq", "fp8_aware": True, "gar": True, "group_params": "static"},
                "calib": {"skip_first": 0}}
    info = {"path": "q", "method": "dpq-gar", "model_type": "llama", "format_version": 1, "settings": settings,
            "calibration": {}, "quantized_linears": 2, "quantized_weight_bytes": 1, "bf16_weight_bytes": 4,
            "ratio_to_bf16": 0.25, "other_tensor_bytes": 0, "concentrated": {"model.layers.1.mlp.down_proj": 0.6}}
    console = Console(record=True, width=200)
    print_info(info, console=console)
    text = console.export_text()
    assert "model.layers.1.mlp.down_proj (60%)" in text and "--ignore model.layers.1.mlp.down_proj" in text
    console = Console(record=True, width=200)
    print_info({**info, "concentrated": {}}, console=console)
    assert "note:" not in console.export_text()
