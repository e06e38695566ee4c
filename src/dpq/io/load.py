"""Rebuild a transformers model with W4A8 Linears from a dpq checkpoint, validating every tensor."""

from __future__ import annotations

from pathlib import Path

import torch

from dpq.io.checkpoint import (
    CheckpointError,
    check_quantized_tensors,
    read_quant_block,
    read_tensors,
    verify_files,
)
from dpq.models.specs import get_submodule, set_submodule
from dpq.nn.linear import W4A8Linear

QUANT_LEAVES = ("weight", "scales", "zeros", "weight_scale", "input_scale", "bias")


def _skeleton(path: Path, dtype: torch.dtype):
    """The model built from config.json with parameters on the meta device (buffers real)."""
    from accelerate import init_empty_weights  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    config = AutoConfig.from_pretrained(path)
    block = config.quantization_config
    del config.quantization_config
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, block


def load(path: str, device: str = "cpu", dtype: torch.dtype | None = None, verify: bool = True):
    """(model, tokenizer) from a dpq checkpoint directory; refuses a wrong or corrupted one with the reason."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p} is not a directory: give the --out directory of dpq quantize")
    block = read_quant_block(p)
    config = block["config"]
    if verify:
        verify_files(p)
    tensors = read_tensors(p, block["format_version"])
    float_dtype = dtype or next((t.dtype for k, t in tensors.items() if k.endswith("embed_tokens.weight")), torch.float32)
    model, _ = _skeleton(p, float_dtype)
    for name, (n, k) in block["modules"].items():
        try:
            lin = get_submodule(model, name)
        except ValueError as e:
            raise CheckpointError(f"quantized module {name} does not exist in this architecture") from e
        if (lin.out_features, lin.in_features) != (n, k):
            raise CheckpointError(f"quantized module {name} is {n}x{k} in the checkpoint but {lin.out_features}x{lin.in_features} in the model config")
        check_quantized_tensors(tensors, name, k, n, config)
        has_bias = f"{name}.bias" in tensors
        q = W4A8Linear(k, n, has_bias, config.weight.group_size, config.fp8.fp8_max, config.weight.scale_dtype,
                       config.target)
        set_submodule(model, name, q)
    expected = model.state_dict()
    tied = block.get("tied", {})
    missing = [k for k in expected if k not in tensors and k not in tied]
    extra = [k for k in tensors if k not in expected]
    if missing:
        raise CheckpointError(f"tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing in all)")
    if extra:
        raise CheckpointError(f"tensor {extra[0]} is not part of this model ({len(extra)} unexpected in all)")
    for key, t in tensors.items():
        want = expected[key]
        if tuple(t.shape) != tuple(want.shape):
            raise CheckpointError(f"tensor {key} has shape {tuple(t.shape)}, expected {tuple(want.shape)}")
        if key.rpartition(".")[2] in QUANT_LEAVES and key.rpartition(".")[0] in block["modules"]:
            continue  # dtypes checked with the module above
        if t.is_floating_point() != want.is_floating_point():
            raise CheckpointError(f"tensor {key} has dtype {t.dtype}, expected a {'float' if want.is_floating_point() else 'integer'} tensor")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"tensor {key} holds NaN or Inf: the checkpoint is corrupted")
    state = {k: (v.to(float_dtype) if v.is_floating_point() and expected[k].dtype != v.dtype
                 and not (k.rpartition(".")[0] in block["modules"]) else v) for k, v in tensors.items()}
    model.load_state_dict(state, strict=False, assign=True)
    for alias, src in tied.items():
        parent, _, leaf = alias.rpartition(".")
        src_parent, _, src_leaf = src.rpartition(".")
        setattr(get_submodule(model, parent), leaf, getattr(get_submodule(model, src_parent), src_leaf))
    leftover = [n for n, prm in model.named_parameters() if prm.device.type == "meta"]
    if leftover:
        raise CheckpointError(f"tensor {leftover[0]} was not restored from the checkpoint")
    model.config.quantization_config = {k: v for k, v in block.items() if k != "config"}
    model.eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(p) if (p / "tokenizer_config.json").is_file() else None
    return model, tokenizer
