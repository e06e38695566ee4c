"""The dpq checkpoint: a directory that `dpq.load` turns back into a transformers model.

    DIR/config.json          the model's config + `quantization_config` (see `quant_block`)
    DIR/model.safetensors    every tensor (or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                             when larger than --max-shard-size); quantized Linears as weight (packed codes) /
                             scales / zeros / weight_scale / input_scale
    DIR/dpq_manifest.json    sha256 and size of each file, so corruption is caught on load
    DIR/tokenizer*.json ...  the tokenizer (checked to tokenize the same after a reload)
    DIR/generation_config.json

Writing is `dpq.io.writer` (the plan and the streamed shards) inside `dpq.io.outdir`'s claimed
partial directory, published at the end: a run that fails leaves `--out` as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

import dpq
from dpq.config import FORMAT_VERSION, READABLE_FORMAT_VERSIONS, ConfigError, QuantConfig
from dpq.io.shards import INDEX_FILE as INDEX
from dpq.io.shards import SINGLE_FILE, ShardError, shard_files
from dpq.io.writer import MANIFEST, TOKENIZER_PROBE  # noqa: F401 - part of this module's interface
from dpq.numerics.int4 import num_groups, storage_dtype

WEIGHTS = SINGLE_FILE
QUANT_METHOD = "dpq"


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


@contextlib.contextmanager
def atomic_directory(out: Path, overwrite: bool = False, protected: tuple = ()):
    """Yield a directory to fill; it becomes `out` when the block ends without error (`dpq.io.outdir`:
    never replaces what this run did not claim, only a dpq checkpoint or empty directory with overwrite).

    A failure removes what was written and leaves `out` as it was.
    """
    from dpq.io import outdir  # noqa: PLC0415

    out = outdir.check_output(out, overwrite, protected=protected)
    claim = outdir.claim(out)
    try:
        for p in claim.checkpoint.iterdir():  # what a dead run left
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        yield claim.checkpoint
    except BaseException:
        claim.release(remove=True)
        raise
    outdir.publish(claim, overwrite)


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
    unlisted = [f for f in shard_files(path) if f not in files]
    if unlisted:
        raise CheckpointError(f"{path / unlisted[0]} is not listed in {MANIFEST}: the checkpoint was changed after "
                              "it was written")
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


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards model.safetensors.index.json names, or model.safetensors."""
    path = Path(path)
    try:
        names = shard_files(path)
    except ShardError as e:
        raise CheckpointError(f"{e}: the checkpoint is corrupted") from e
    if names:
        return [path / n for n in names]
    raise CheckpointError(f"{path} has neither {WEIGHTS} nor {INDEX}: the checkpoint has no weights")


def read_tensors(path: Path, version: int = FORMAT_VERSION) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint (all shards), named as this version of dpq names them."""
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        if not f.is_file():
            raise CheckpointError(f"{f} is missing")
        try:
            with safe_open(str(f), framework="pt") as sf:
                tensors.update({k: sf.get_tensor(k) for k in sf.keys()})
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
