"""Checks of a dpq checkpoint directory before (and right after) its tensors are loaded.

The same checks run when transformers loads the directory through dpq's quantizer
(`dpq.integrations.hf_quantizer`), when `dpq.load` does, and in `dpq info`:

    check_manifest       dpq_manifest.json is valid JSON, lists the config and every weights file, and
                         every file it lists has its size and sha256 (dpq-written directories); a directory
                         written by transformers' save_pretrained has none and says so in its config
    read_headers         every safetensors file (one model.safetensors, or the shards an index names) opens;
                         {tensor: (shape, dtype, file)} without reading tensor data
    check_headers        no tensor missing or unexpected, every shape and dtype as the model expects
    check_quant_values   per quantized Linear: scales finite and positive, zero points INT4 (reads only the
                         small tensors; the packed codes stay on disk)
    check_finite         every float tensor of a loaded model (or streamed from the files) is finite

Each failure is a CheckpointError naming the file or tensor and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from dpq.io.checkpoint import (  # noqa: F401 - weight_files is part of this module's interface
    MANIFEST,
    WEIGHTS,
    CheckpointError,
    check_quantized_tensors,
    verify_files,
    weight_files,
)

QUANT_LEAVES = ("weight", "scales", "zeros", "weight_scale", "input_scale", "bias")
SMALL_LEAVES = ("scales", "zeros", "weight_scale", "input_scale")
V1_CODES = "qweight"
"""Format version 1's name of the packed codes (version 2: `weight`)."""
NO_MANIFEST = "manifest"
"""quantization_config key set to false by checkpoints written through transformers' save_pretrained."""

DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

Headers = dict[str, tuple[tuple[int, ...], str, Path]]


def check_manifest(path: Path, block: dict, files: Iterable[Path]) -> bool:
    """Check dpq_manifest.json and every file it lists; False for a save_pretrained directory without one."""
    man = path / MANIFEST
    if not man.is_file():
        if block.get(NO_MANIFEST) is False:
            return False
        raise CheckpointError(
            f"{path} has no {MANIFEST}: the checkpoint is incomplete or was copied without it; "
            "copy it from the original checkpoint, or save the model again")
    try:
        data = json.loads(man.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{man} is not valid JSON ({e}): the manifest is corrupted; copy it from the "
                              "original checkpoint, or save the model again") from e
    listed = data.get("files") if isinstance(data, dict) else None
    if not isinstance(listed, dict) or not all(isinstance(v, dict) and {"sha256", "bytes"} <= set(v)
                                               for v in listed.values()):
        raise CheckpointError(f"{man} has no valid \"files\" list (name -> sha256, bytes): the manifest is "
                              "corrupted; copy it from the original checkpoint, or save the model again")
    for f in ["config.json", *(p.name for p in files)]:
        if f not in listed:
            raise CheckpointError(f"{man} does not list {f}: the manifest does not belong to these files")
    verify_files(path)
    return True


def read_headers(files: Iterable[Path], version: int) -> Headers:
    """{tensor name (version 2 names): (shape, safetensors dtype, file)} of every tensor, data unread."""
    out: Headers = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f} is missing from the checkpoint")
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    sl = sf.get_slice(key)
                    name = key[: -len(V1_CODES)] + "weight" if version == 1 and key.endswith("." + V1_CODES) else key
                    if name in out:
                        raise CheckpointError(f"tensor {key} is stored twice ({out[name][2].name} and {f.name})")
                    out[name] = (tuple(sl.get_shape()), sl.get_dtype(), f)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{f} cannot be read ({e}): the file is truncated or corrupted") from e
    return out


def check_headers(headers: Headers, expected: dict[str, torch.Tensor], block: dict, tied: Iterable[str]) -> None:
    """Every expected tensor present (tied aliases may be), nothing unexpected, shapes and dtypes right.

    expected: the model's state dict (meta tensors are fine); tied: names that may be absent (tied weights).
    """
    modules = block["modules"]
    optional = set(tied) | set(block.get("tied", {}))
    missing = [k for k in expected if k not in headers and k not in optional]
    extra = [k for k in headers if k not in expected]
    if missing:
        raise CheckpointError(f"tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing in all)")
    if extra:
        raise CheckpointError(f"tensor {extra[0]} is not part of this model ({len(extra)} unexpected in all)")
    for key, (shape, dtype, f) in headers.items():
        want = expected[key]
        if shape != tuple(want.shape):
            raise CheckpointError(f"tensor {key} has shape {shape}, expected {tuple(want.shape)} (in {f.name})")
        if dtype not in DTYPES:
            raise CheckpointError(f"tensor {key} has dtype {dtype}, which no dpq checkpoint holds (in {f.name})")
        module, _, leaf = key.rpartition(".")
        if module in modules and leaf in QUANT_LEAVES and leaf != "bias":
            continue  # checked per module by check_quant_values
        if DTYPES[dtype].is_floating_point != want.is_floating_point():
            kind = "float" if want.is_floating_point() else "integer"
            raise CheckpointError(f"tensor {key} has dtype {dtype}, expected a {kind} tensor (in {f.name})")


def check_quant_values(headers: Headers, block: dict) -> None:
    """Shapes, dtypes and values of each quantized Linear's tensors (codes by header only)."""
    config = block["config"]
    version = block["format_version"]
    by_file: dict[Path, list[str]] = {}
    for name in block["modules"]:
        for leaf in SMALL_LEAVES:
            if f"{name}.{leaf}" in headers:
                by_file.setdefault(headers[f"{name}.{leaf}"][2], []).append(f"{name}.{leaf}")
    small: dict[str, torch.Tensor] = {}
    for f, keys in by_file.items():
        try:
            with safe_open(str(f), framework="pt") as sf:
                small.update({k: sf.get_tensor(k) for k in keys})
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{f} cannot be read ({e}): the file is truncated or corrupted") from e
    for name, (n, k) in block["modules"].items():
        tensors = {key: t for key, t in small.items() if key.startswith(name + ".")}
        codes = headers.get(f"{name}.weight")
        if codes is not None:  # shape and dtype only; the data stays on disk
            tensors[f"{name}.weight"] = torch.empty(codes[0], dtype=DTYPES.get(codes[1], torch.uint8), device="meta")
        try:
            check_quantized_tensors(tensors, name, k, n, config)
        except CheckpointError as e:
            if version == 1 and f"{name}.weight" in str(e):
                raise CheckpointError(str(e).replace(f"{name}.weight", f"{name}.{V1_CODES}")) from None
            raise


def check_finite(named: Iterable[tuple[str, torch.Tensor]], modules: Iterable[str]) -> None:
    """Every float tensor outside the quantized Linears is finite (their scales are checked on their own)."""
    quantized = set(modules)
    for key, t in named:
        module, _, leaf = key.rpartition(".")
        if module in quantized and leaf != "bias":
            continue
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"tensor {key} holds NaN or Inf: the checkpoint is corrupted")


def stream_tensors(headers: Headers) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every float tensor, one at a time, read from its file."""
    by_file: dict[Path, list[str]] = {}
    for key, (_, dtype, f) in headers.items():
        if DTYPES[dtype].is_floating_point:
            by_file.setdefault(f, []).append(key)
    for f, keys in by_file.items():
        with safe_open(str(f), framework="pt") as sf:
            for key in keys:
                yield key, sf.get_tensor(key)


def dpq_traces(path: Path) -> str | None:
    """Why `path` looks like a dpq checkpoint (its manifest, dpq's tensor names or file metadata), else None.

    For a directory whose config.json lost its dpq quantization_config: a float loader would give
    its quantized Linears random weights (format 1) or stop on a shape mismatch (format 2).
    """
    if (path / MANIFEST).is_file():
        return f"it holds {MANIFEST}"
    try:
        files = weight_files(path)
    except CheckpointError:
        return None
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                if "dpq_format_version" in (sf.metadata() or {}):
                    return f"{f.name} was written by dpq"
                leaves = {k.rpartition(".")[2] for k in sf.keys()}
        except (SafetensorError, OSError, RuntimeError):
            return None
        if {"scales", "zeros", "weight_scale"} <= leaves or V1_CODES in leaves:
            return f"{f.name} holds packed INT4 Linears (scales, zeros, weight_scale)"
    return None


def refuse_broken_checkpoint(p: Path) -> None:
    """Raise when `p` holds a dpq checkpoint whose config.json lost (or renamed) its quantization_config."""
    why = dpq_traces(p)
    if why is None:
        return
    try:
        qc = json.loads((p / "config.json").read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return  # read_quant_block names a missing or broken config.json
    if isinstance(qc, dict) and qc.get("quant_method") == "dpq":
        return
    what = ("has no quantization_config" if not isinstance(qc, dict) else
            f"has quantization_config.quant_method {qc.get('quant_method')!r}, not 'dpq'")
    raise CheckpointError(
        f"{p} is a dpq checkpoint ({why}) but its config.json {what}: loaded as a float model its quantized "
        "Linears would not be the checkpoint's; restore config.json from the original checkpoint")
