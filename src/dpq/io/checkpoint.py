"""The dpq checkpoint: a directory that `dpq.load` turns back into a transformers model.

    DIR/config.json          the model's config + `quantization_config` (see `quant_block`)
    DIR/model.safetensors    every tensor; quantized Linears as weight (packed codes)/scales/zeros/weight_scale/input_scale
    DIR/dpq_manifest.json    sha256 and size of each file, so corruption is caught on load
    DIR/tokenizer*.json ...  the tokenizer (checked to tokenize the same after a reload)
    DIR/generation_config.json (when the model has one)

Writes go to a temporary sibling directory that is renamed at the end: a run
that fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import dpq
from dpq.config import FORMAT_VERSION, READABLE_FORMAT_VERSIONS, ConfigError, QuantConfig
from dpq.numerics.int4 import num_groups, storage_dtype

WEIGHTS = "model.safetensors"
MANIFEST = "dpq_manifest.json"
QUANT_METHOD = "dpq"
TOKENIZER_PROBE = "The capital of France is Paris. Robert Boulter is an English actor, born 1,234 years ago."


class CheckpointError(ValueError):
    """A checkpoint is missing, wrong or corrupted; the message names the file or tensor and the problem."""


def quant_block(config: QuantConfig, modules: dict[str, list[int]], calibration: dict,
                source_model: str | None = None, top_token_share: dict[str, float] | None = None) -> dict:
    """The `quantization_config` written into config.json.

    top_token_share: {Linear name: share of its calibration tr(H) carried by the top 0.1% of tokens}
    (`QuantSummary.top_token_shares`); empty for data-free methods and for checkpoints written before it.
    """
    return {
        "source_model": source_model,
        "quant_method": QUANT_METHOD,
        "format_version": FORMAT_VERSION,
        "method": config.method,
        "dpq_version": dpq.__version__,
        "settings": config.to_dict(),
        "calibration": calibration,
        "modules": dict(sorted(modules.items())),  # name -> [out_features, in_features]
        "top_token_share": dict(sorted((top_token_share or {}).items())),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _dedup_state(model) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without tied duplicates: (tensors, {alias: kept name})."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_ptr: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        key = (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.device.type != "meta" else None
        if key is not None and key in by_ptr:
            aliases[name] = by_ptr[key]
            continue
        if key is not None:
            by_ptr[key] = name
        tensors[name] = t
    return tensors, aliases


def quantized_modules(model) -> dict[str, list[int]]:
    """{name: [out_features, in_features]} of every W4A8 Linear in the model."""
    from dpq.nn.linear import W4A8Linear  # noqa: PLC0415

    return {n: [m.out_features, m.in_features] for n, m in model.named_modules() if isinstance(m, W4A8Linear)}


def save(model, tokenizer, out_dir: str | os.PathLike, config: QuantConfig, calibration: dict | None = None,
         overwrite: bool = False, source_model: str | None = None,
         top_token_share: dict[str, float] | None = None) -> Path:
    """Write a quantized model as a dpq checkpoint directory (atomically)."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists: choose another --out or remove it first")
    modules = quantized_modules(model)
    if not modules:
        raise CheckpointError("the model has no quantized Linears: run dpq.quantize first")
    with atomic_directory(out, overwrite) as tmp:
        tensors, aliases = _dedup_state(model)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "dpq_format_version": str(FORMAT_VERSION)})
        cfg = model.config.to_dict()
        cfg["quantization_config"] = quant_block(config, modules, calibration or {}, source_model, top_token_share)
        cfg["quantization_config"]["tied"] = aliases
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str), encoding="utf-8")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        if tokenizer is not None:
            _save_tokenizer(tokenizer, tmp)
        files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION, "files": files}, indent=2))
    return out


@contextlib.contextmanager
def atomic_directory(out: Path, overwrite: bool = False):
    """Yield a temporary sibling directory that replaces `out` when the block ends without error.

    A failure removes the temporary directory and leaves `out` as it was.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists: choose another --out or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_tokenizer(tokenizer, path: Path) -> None:
    from transformers import AutoTokenizer  # noqa: PLC0415

    tokenizer.save_pretrained(path)
    reloaded = AutoTokenizer.from_pretrained(path)
    if reloaded(TOKENIZER_PROBE).input_ids != tokenizer(TOKENIZER_PROBE).input_ids:
        raise CheckpointError(
            "the saved tokenizer tokenizes differently after a reload (its merges or special tokens were lost): "
            "load the tokenizer from the original model directory, not from a GGUF file, and save again"
        )


def read_quant_block(path: str | os.PathLike) -> dict:
    """config.json's quantization_config of a dpq checkpoint, validated."""
    p = Path(path)
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{p} is not a dpq checkpoint: it has no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e.msg}): the checkpoint is corrupted") from e
    block = cfg.get("quantization_config")
    if not isinstance(block, dict) or block.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"{cfg_path} has no dpq quantization_config: {p} is not a dpq checkpoint")
    version = block.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise CheckpointError(
            f"{p}: checkpoint format version {version!r} is not one this dpq reads "
            f"({', '.join(map(str, READABLE_FORMAT_VERSIONS))}): upgrade dpq, or re-quantize the model"
        )
    try:
        block["config"] = QuantConfig.from_dict(block["settings"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{cfg_path}: invalid quantization settings: {e}") from e
    return block


def is_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg.get("quantization_config"), dict) and cfg["quantization_config"].get("quant_method") == QUANT_METHOD


def verify_files(path: Path) -> None:
    """Every file the manifest lists exists with its size and sha256."""
    man = path / MANIFEST
    if not man.is_file():
        raise CheckpointError(f"{path} has no {MANIFEST}: the checkpoint is incomplete; save it again")
    files = json.loads(man.read_text(encoding="utf-8"))["files"]
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing from the checkpoint")
        if f.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{f} has {f.stat().st_size} bytes, the manifest says {meta['bytes']}: the file is truncated or changed")
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{f} does not match its sha256 in {MANIFEST}: the file is corrupted")


V1_CODES = "qweight"
"""Version 1's name of the packed codes (version 2: `weight`)."""


def read_tensors(path: Path, version: int = FORMAT_VERSION) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, named as this version of dpq names them."""
    f = path / WEIGHTS
    if not f.is_file():
        raise CheckpointError(f"{f} is missing")
    try:
        with safe_open(str(f), framework="pt") as sf:
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{f} cannot be read ({e}): the file is truncated or corrupted") from e
    if version == 1:
        tensors = {(k[: -len(V1_CODES)] + "weight" if k.endswith("." + V1_CODES) else k): t for k, t in tensors.items()}
    return tensors


def check_quantized_tensors(tensors: dict[str, torch.Tensor], name: str, k: int, n: int, config: QuantConfig) -> None:
    """Shapes, dtypes and finiteness of one quantized Linear's tensors."""
    g = num_groups(k, config.weight.group_size)
    want = {
        "weight": ((n, (k + 1) // 2), torch.uint8),
        "scales": ((n, g), storage_dtype(config.weight.scale_dtype)),
        "zeros": ((n, g), torch.uint8),
        "weight_scale": ((), torch.float32),
    }
    if config.fp8.enabled and config.target == "paper":  # vllm-w4afp8 scales activations per token at run time
        want["input_scale"] = ((), torch.float32)
    for leaf, (shape, dtype) in want.items():
        key = f"{name}.{leaf}"
        if key not in tensors:
            raise CheckpointError(f"tensor {key} is missing from the checkpoint")
        t = tensors[key]
        if tuple(t.shape) != shape:
            raise CheckpointError(f"tensor {key} has shape {tuple(t.shape)}, expected {shape}")
        if t.dtype != dtype:
            raise CheckpointError(f"tensor {key} has dtype {t.dtype}, expected {dtype}")
        if t.is_floating_point() and not (torch.isfinite(t.float()).all() and (t.float() > 0).all()):
            raise CheckpointError(f"tensor {key} holds NaN, Inf or non-positive scales: the checkpoint is corrupted")
    if int(tensors[f"{name}.zeros"].max()) > 15:
        raise CheckpointError(f"tensor {name}.zeros holds values above 15: not INT4 zero points")
