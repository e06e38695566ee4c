"""Load a dpq checkpoint: transformers' from_pretrained through dpq's quantizer, plus the tokenizer.

`dpq.load(DIR)` and `AutoModelForCausalLM.from_pretrained(DIR)` (after `import dpq`) are the same
path (dpq.integrations.hf_quantizer), so they return the same model bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dpq.io.checkpoint import CheckpointError, read_quant_block
from dpq.models.specs import get_submodule, set_submodule
from dpq.nn.linear import W4A8Linear


def swap_in_w4a8(model, block: dict) -> None:
    """Replace each Linear the checkpoint's block names by an (empty) W4A8Linear on the Linear's device.

    block: read_quant_block's result; its modules map name -> [out_features N, in_features K].
    """
    config = block["config"]
    for name, (n, k) in block["modules"].items():
        try:
            lin = get_submodule(model, name)
        except ValueError as e:
            raise CheckpointError(f"quantized module {name} does not exist in this architecture") from e
        if not isinstance(lin, torch.nn.Linear):
            raise CheckpointError(f"quantized module {name} is a {type(lin).__name__} in this model, not a Linear")
        if (lin.out_features, lin.in_features) != (n, k):
            raise CheckpointError(f"quantized module {name} is {n}x{k} in the checkpoint but "
                                  f"{lin.out_features}x{lin.in_features} in the model config")
        with torch.device(lin.weight.device):
            q = W4A8Linear(k, n, lin.bias is not None, config.weight.group_size, config.fp8.fp8_max,
                           config.weight.scale_dtype, config.target)
        set_submodule(model, name, q)


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer, or None when the directory has none."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    if not (path / "tokenizer_config.json").is_file():
        return None
    return AutoTokenizer.from_pretrained(path)


def load(path: str, device: str = "cpu", dtype: torch.dtype | None = None, **kwargs):
    """(model, tokenizer) from a dpq checkpoint directory; refuses a wrong or corrupted one with the reason.

    dtype: of the unquantized tensors (embeddings, norms, lm_head); None keeps the checkpoint's.
    The tokenizer is None when the directory holds none. kwargs go to from_pretrained (device_map, ...).
    """
    import dpq.integrations.hf_quantizer as hf  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from dpq.io.verify import read_headers, refuse_broken_checkpoint, weight_files  # noqa: PLC0415

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p} is not a directory: give the --out directory of dpq quantize")
    refuse_broken_checkpoint(p)
    block = read_quant_block(p)  # a clear error before transformers sees a foreign or broken block
    read_headers(weight_files(p), block["format_version"])  # unreadable files named before transformers opens them
    hf.register()
    model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype or "auto", **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    return model.eval(), load_tokenizer(p)


def check(path: str | Path) -> tuple[dict, dict]:
    """Everything `load` checks, without loading the weights: (block, {tensor: (shape, dtype, file)}).

    Reads the manifest's files for their sha256, and every float tensor once, one at a time.
    """
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    from dpq.io.verify import (  # noqa: PLC0415
        check_finite,
        check_headers,
        check_manifest,
        check_quant_values,
        read_headers,
        refuse_broken_checkpoint,
        stream_tensors,
        weight_files,
    )

    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p} is not a directory: give the --out directory of dpq quantize")
    refuse_broken_checkpoint(p)
    block = read_quant_block(p)
    files = weight_files(p)
    check_manifest(p, block, files)
    headers = read_headers(files, block["format_version"])
    config = AutoConfig.from_pretrained(p)
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    swap_in_w4a8(model, block)
    check_headers(headers, model.state_dict(), block, getattr(model, "all_tied_weights_keys", {}) or {})
    check_quant_values(headers, block)
    check_finite(stream_tensors(headers), block["modules"])
    return block, headers
