"""dpq info's table (dpq.report.print_info)."""

from __future__ import annotations

from rich.console import Console

from dpq.config import QuantConfig
from dpq.report import activation_text, print_info


def _info(cfg: QuantConfig) -> dict:
    return {"path": "ck", "method": cfg.method, "model_type": "llama", "format_version": 2,
            "settings": cfg.to_dict(), "calibration": {}, "quantized_linears": 14, "quantized_weight_bytes": 1,
            "bf16_weight_bytes": 4, "ratio_to_bf16": 0.25, "other_tensor_bytes": 0, "concentrated": {}}


def test_vllm_checkpoint_activations_are_dynamic_per_token():
    cfg = QuantConfig.for_method("dpq", target="vllm-w4afp8")
    console = Console(record=True, width=200)
    print_info(_info(cfg), console)
    text = console.export_text()
    assert "dynamic per-token" in text and "static" not in text


def test_paper_and_w4a16_activations():
    assert activation_text(QuantConfig.for_method("dpq-gar", fp8_max=240).to_dict()).startswith(
        "FP8 E4M3 static per-tensor (maxabs")
    assert "F = 240" in activation_text(QuantConfig.for_method("dpq-gar", fp8_max=240).to_dict())
    assert activation_text(QuantConfig.for_method("rtn-w4a16").to_dict()) == "BF16 (W4A16)"
