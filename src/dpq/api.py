"""The Python API: quantize a model, save it, load it, describe it.

    import dpq
    cfg = dpq.QuantConfig.for_method("dpq-gar", calib=dpq.CalibSpec(samples=16, seq_len=512))
    result = dpq.quantize_to_disk("path/to/model", "out/model-dpq-gar", cfg)   # streams layer by layer
    qmodel, qtok = dpq.load("out/model-dpq-gar")

or, with a model already in memory:

    from dpq.models.loading import load_float_model
    model, tok, _ = load_float_model()                  # SmolLM2-135M-Instruct, bundled
    result = dpq.quantize(model, tok, cfg)              # in place; result.summary has the per-Linear report
    dpq.save(result, "out/smollm2-dpq-gar")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dpq.config import QuantConfig
from dpq.io.load import load as _load
from dpq.models.checks import check_model
from dpq.models.driver import concentrated, quantize_model
from dpq.models.memory import check_run_memory
from dpq.models.source import float_dtype
from dpq.pipeline import (
    QuantResult,
    _calibration,
    _check_batch_size,
    _check_config,
    calibration_info,
    quantize_to_disk,
    save_quantized,
)

__all__ = ["QuantResult", "export", "info", "load", "load_any", "quantize", "quantize_to_disk", "save"]


def quantize(model, tokenizer, config: QuantConfig | None = None, calib: torch.Tensor | None = None,
             device: str = "cpu", progress: bool = True, batch_size: int = 8) -> QuantResult:
    """Quantize `model` (in memory) in place with `config` (default: `QuantConfig.for_method()`, dpq-gar-plus); returns a QuantResult.

    calib: [samples, tokens] token ids; None draws them from `config.calib`
    (WikiText-2 validation text by default). `result.calibration` records the source and a
    fingerprint of the exact tokens; `dpq.save(result, out)` writes the checkpoint.
    Refused before any calibration (`dpq.models.checks`): ignore patterns that match no Linear or
    every Linear, sequences longer than the model's context, a model already quantized.
    """
    config = _check_config(config)
    _check_batch_size(batch_size)
    check_model(model, config, config.calib.seq_len if calib is None else int(calib.shape[-1]))
    calib = _calibration(tokenizer, config, calib)
    check_run_memory(model, float_dtype(model).itemsize, config, int(calib.numel()))
    summary = quantize_model(model, calib, config, device=device, batch_size=batch_size, progress=progress)
    return QuantResult(config, summary, calibration_info(config, calib), model=model, tokenizer=tokenizer,
                       source_model=getattr(model.config, "_name_or_path", None) or None)


def save(result: QuantResult, out_dir: str, overwrite: bool = False, source_model: str | None = None,
         max_shard_size: str | int = "5GB") -> Path:
    """Write `dpq.quantize`'s result as a checkpoint directory (atomic; shards of at most max_shard_size).

    source_model: what the float model was loaded from (recorded so `dpq eval DIR --vs-float` can find it);
    default: the model config's name_or_path.
    """
    if source_model is not None and isinstance(result, QuantResult):
        result.source_model = source_model
    return save_quantized(result, out_dir, overwrite=overwrite, max_shard_size=max_shard_size)


def load(path: str, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer) from a dpq checkpoint; the Linears are W4A8 modules."""
    return _load(path, device=device, dtype=dtype)


def export(path: str, out: str, format: str = "compressed-tensors", target: str | None = None,
           overwrite: bool = False, weights: str | None = None) -> Path:
    """Write the dpq checkpoint `path` as a compressed-tensors model directory `out` (atomic).

    target: "paper" or "vllm-w4afp8"; None keeps the checkpoint's own. weights: "int4" (packed
    INT4) or "fp8" (dpq's exact FP8 inference weights, paper target); None: fp8 for the paper
    target with FP8, else int4. Refuses, with the reason, what the format or vLLM cannot express
    (dpq.io.export.ExportError).
    """
    from dpq.io.export import export as _export  # noqa: PLC0415

    return _export(path, out, format=format, target=target, overwrite=overwrite, weights=weights)


def load_any(model_or_dir: str | None, device: str = "cpu"):
    """(model, tokenizer, name) for a dpq checkpoint directory or any float model dpq can load.

    A float model is named as `dpq quantize`'s MODEL: bundled name, directory, .gguf file or hub name.
    Refuses, before loading, a checkpoint without tokenizer files and a directory that holds a dpq
    checkpoint's tensors under a config.json without its dpq quantization_config.
    """
    from dpq.io.checkpoint import CheckpointError, is_checkpoint  # noqa: PLC0415

    if model_or_dir is not None and is_checkpoint(model_or_dir):
        p = Path(model_or_dir)
        if not (p / "tokenizer_config.json").is_file():
            raise CheckpointError(
                f"{p} has no tokenizer (tokenizer_config.json): copy the source model's tokenizer into it, "
                f"e.g. AutoTokenizer.from_pretrained(SOURCE).save_pretrained('{p}')")
        model, tok = load(model_or_dir, device=device)
        return model, tok, str(model_or_dir)
    if model_or_dir is not None and Path(model_or_dir).is_dir():
        from dpq.io.verify import refuse_broken_checkpoint  # noqa: PLC0415

        refuse_broken_checkpoint(Path(model_or_dir))
    from dpq.models.loading import load_float_model  # noqa: PLC0415

    model, tok, src = load_float_model(model_or_dir, device=device)
    return model, tok, src.name


def info(path: str) -> dict:
    """What a checkpoint holds: method, settings, sizes of the quantized Linears against BF16.

    Checks first what `load` checks (manifest and sha256, tensor names, shapes, dtypes, scale and
    float values) and raises CheckpointError naming the problem.
    "concentrated" names the Linears whose calibration inputs a few tokens dominated
    ({name: top-0.1%-token share of tr(H)} above `dpq.models.driver.CONCENTRATED_SHARE`).
    """
    from dpq.io.load import check  # noqa: PLC0415

    p = Path(path)
    block, headers = check(p)
    modules = block["modules"]
    q_bytes = 0
    bf16_bytes = 0
    other_bytes = 0
    for key, (shape, dtype, _) in headers.items():
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * _dtype_size(dtype)
        module, _, leaf = key.rpartition(".")
        if module in modules:
            q_bytes += nbytes if leaf != "bias" else 0
            if leaf == "weight":  # the packed codes (version 1 names them qweight; headers use version 2 names)
                n, k = modules[module]
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
    return {"U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "BF16": 2, "F16": 2, "F32": 4, "I32": 4, "I64": 8, "F64": 8, "BOOL": 1}[name]
