"""The Python API: quantize a model, save it, load it, describe it.

    import dpq
    from dpq.models.loading import load_float_model
    model, tok, _ = load_float_model()                  # SmolLM2-135M-Instruct, bundled
    cfg = dpq.QuantConfig.for_method("dpq-gar", calib=dpq.CalibSpec(samples=16, seq_len=512))
    summary = dpq.quantize(model, tok, cfg)
    dpq.save(model, tok, "out/smollm2-dpq-gar", cfg)
    qmodel, qtok = dpq.load("out/smollm2-dpq-gar")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dpq.config import QuantConfig
from dpq.io.checkpoint import WEIGHTS, read_quant_block
from dpq.io.checkpoint import save as _save
from dpq.io.data import calibration_batches, fingerprint
from dpq.io.load import load as _load
from dpq.models.driver import QuantSummary, concentrated, quantize_model


def quantize(model, tokenizer, config: QuantConfig | None = None, calib: torch.Tensor | None = None,
             device: str = "cpu", progress: bool = True, batch_size: int = 8) -> QuantSummary:
    """Quantize `model` in place with `config` (default: dpq-gar); returns the run's summary.

    calib: [samples, tokens] token ids; None draws them from `config.calib`
    (WikiText-2 validation text by default). The summary's `calibration`
    attribute records the source and a fingerprint of the exact tokens.
    """
    config = config or QuantConfig()
    if calib is None:
        c = config.calib
        calib = calibration_batches(tokenizer, c.source, c.samples, c.seq_len, c.seed, c.holdout)
    summary = quantize_model(model, calib, config, device=device, batch_size=batch_size, progress=progress)
    summary.calibration = {
        "source": config.calib.source,
        "samples": int(calib.shape[0]),
        "seq_len": int(calib.shape[1]),
        "seed": config.calib.seed,
        "fingerprint": fingerprint(calib),
    }
    model._dpq_config = config
    model._dpq_calibration = summary.calibration
    model._dpq_top_token_share = summary.top_token_shares()
    return summary


def save(model, tokenizer, out_dir: str, config: QuantConfig | None = None, overwrite: bool = False,
         source_model: str | None = None) -> Path:
    """Write the quantized model as a checkpoint directory (atomic).

    source_model: what the float model was loaded from (recorded so `dpq eval DIR --vs-float` can find it).
    """
    config = config or getattr(model, "_dpq_config", None)
    if config is None:
        raise ValueError("save needs the QuantConfig the model was quantized with (pass config=...)")
    return _save(model, tokenizer, out_dir, config, getattr(model, "_dpq_calibration", None), overwrite=overwrite,
                 top_token_share=getattr(model, "_dpq_top_token_share", None),
                 source_model=source_model)


def load(path: str, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer) from a dpq checkpoint; the Linears are W4A8 modules."""
    return _load(path, device=device, dtype=dtype)


def export(path: str, out: str, format: str = "compressed-tensors", target: str | None = None,
           overwrite: bool = False) -> Path:
    """Write the dpq checkpoint `path` as a compressed-tensors model directory `out` (atomic).

    target: "paper" or "vllm-w4afp8"; None keeps the checkpoint's own. Refuses, with the
    reason, what the format or vLLM cannot express (dpq.io.export.ExportError).
    """
    from dpq.io.export import export as _export  # noqa: PLC0415

    return _export(path, out, format=format, target=target, overwrite=overwrite)


def load_any(model_or_dir: str | None, device: str = "cpu"):
    """(model, tokenizer, name) for a dpq checkpoint directory or any float model dpq can load.

    A float model is named as `dpq quantize`'s MODEL: bundled name, directory, .gguf file or hub name.
    """
    from dpq.io.checkpoint import is_checkpoint  # noqa: PLC0415

    if model_or_dir is not None and is_checkpoint(model_or_dir):
        model, tok = load(model_or_dir, device=device)
        return model, tok, str(model_or_dir)
    from dpq.models.loading import load_float_model  # noqa: PLC0415

    model, tok, src = load_float_model(model_or_dir, device=device)
    return model, tok, src.name


def info(path: str) -> dict:
    """What a checkpoint holds: method, settings, sizes of the quantized Linears against BF16.

    "concentrated" names the Linears whose calibration inputs a few tokens dominated
    ({name: top-0.1%-token share of tr(H)} above `dpq.models.driver.CONCENTRATED_SHARE`).
    """
    from safetensors import safe_open  # noqa: PLC0415

    p = Path(path)
    block = read_quant_block(p)
    modules = set(block["modules"])
    q_bytes = 0
    bf16_bytes = 0
    other_bytes = 0
    with safe_open(str(p / WEIGHTS), framework="pt") as sf:
        for key in sf.keys():
            sl = sf.get_slice(key)
            shape = sl.get_shape()
            numel = 1
            for d in shape:
                numel *= d
            nbytes = numel * _dtype_size(sl.get_dtype())
            module, _, leaf = key.rpartition(".")
            if module in modules:
                q_bytes += nbytes if leaf != "bias" else 0
                if leaf in ("weight", "qweight"):  # qweight: format version 1
                    n, k = block["modules"][module]
                    bf16_bytes += n * k * 2
            else:
                other_bytes += nbytes
    cfg = json.loads((p / "config.json").read_text())
    return {
        "path": str(p),
        "method": block["method"],
        "format_version": block["format_version"],
        "dpq_version": block.get("dpq_version"),
        "model_type": cfg.get("model_type"),
        "quantized_linears": len(modules),
        "settings": block["settings"],
        "calibration": block.get("calibration", {}),
        "concentrated": concentrated(block.get("top_token_share")),
        "quantized_weight_bytes": q_bytes,
        "bf16_weight_bytes": bf16_bytes,
        "ratio_to_bf16": q_bytes / bf16_bytes if bf16_bytes else float("nan"),
        "other_tensor_bytes": other_bytes,
    }


def _dtype_size(name: str) -> int:
    return {"U8": 1, "I8": 1, "F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4, "I32": 4, "I64": 8, "F64": 8, "BOOL": 1}[name]
