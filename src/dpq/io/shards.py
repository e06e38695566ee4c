"""Streaming, sharded safetensors output: each tensor goes to disk as soon as it exists.

safetensors' own writer needs every tensor of a file in memory at once. A dpq checkpoint
knows the name, dtype and shape of every tensor before calibration starts (they follow from
the model's config and the quantization settings), so the layout is planned up front
(`plan_shards`): units (the non-layer tensors, then one unit per decoder layer) are packed
into shards of at most `max_bytes`, each shard's header is written when the shard is opened,
and the tensor bytes are appended in the planned order as the units finish
(`ShardedWriter`). The files are plain safetensors (little-endian; an 8-byte header length,
a JSON header padded with spaces to a multiple of 8, the data); names follow transformers:
`model.safetensors` for one shard, else `model-0000i-of-0000n.safetensors` and
`model.safetensors.index.json`. Same tensors in, same bytes out: the header's keys are in a
fixed order.

A writer can be reopened after a crash at any unit boundary (`ShardedWriter(..., resume_units=k)`):
the shard being written is cut back to the end of unit k and its sha256 recomputed.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"

_DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
    torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class ShardError(ValueError):
    """A shard plan or write went wrong; the message names the tensor or the file."""


def parse_size(text: str | int) -> int:
    """"5GB" -> 5_000_000_000, "500MiB" -> 524_288_000 (transformers' convention: GB = 10^9 bytes)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
        if m is None or m.group(2) not in _SIZE_UNITS:
            raise ShardError(f"shard size {text!r}: give a size such as 5GB, 500MB or 2GiB")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if size <= 0:
        raise ShardError(f"shard size {text!r}: must be positive")
    return size


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the checkpoint: name, dtype, shape (known before the tensor exists)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()

    @classmethod
    def of(cls, name: str, t: torch.Tensor) -> "TensorEntry":
        return cls(name, t.dtype, tuple(t.shape))


@dataclass(frozen=True)
class Shard:
    """One file: its name and its tensors in write order."""

    filename: str
    entries: tuple[TensorEntry, ...]

    def header(self, metadata: dict[str, str]) -> bytes:
        """The 8-byte length and the JSON header (keys in write order, padded to 8 bytes)."""
        head: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
        offset = 0
        for e in self.entries:
            if e.dtype not in _DTYPE_CODES:
                raise ShardError(f"tensor {e.name}: dtype {e.dtype} cannot be stored in safetensors")
            head[e.name] = {"dtype": _DTYPE_CODES[e.dtype], "shape": list(e.shape),
                            "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        text = json.dumps(head, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text

    @property
    def data_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)


@dataclass(frozen=True)
class ShardPlan:
    """Where every tensor goes: the shards, and which tensors make up each unit."""

    shards: tuple[Shard, ...]
    units: tuple[tuple[str, ...], ...]  # tensor names of each unit, in write order

    @property
    def filenames(self) -> list[str]:
        return [s.filename for s in self.shards]

    def index(self) -> dict:
        """transformers' model.safetensors.index.json (only written for more than one shard)."""
        weight_map = {e.name: s.filename for s in self.shards for e in s.entries}
        total = sum(s.data_bytes for s in self.shards)
        return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def plan_shards(units: list[list[TensorEntry]], max_bytes: int) -> ShardPlan:
    """Pack units (lists of tensors written together) into shards of at most max_bytes.

    A unit stays in one shard when it fits in one; a larger unit is split between tensors;
    a single tensor larger than max_bytes gets a shard of its own.
    """
    seen: set[str] = set()
    for e in (e for u in units for e in u):
        if e.name in seen:
            raise ShardError(f"tensor {e.name} is planned twice")
        seen.add(e.name)
    groups: list[list[TensorEntry]] = [[]]
    size = 0
    for unit in units:
        unit_bytes = sum(e.nbytes for e in unit)
        if groups[-1] and size + unit_bytes > max_bytes:
            groups.append([])
            size = 0
        for e in unit:
            if groups[-1] and size + e.nbytes > max_bytes:
                groups.append([])
                size = 0
            groups[-1].append(e)
            size += e.nbytes
    groups = [g for g in groups if g]
    n = len(groups)
    files = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    shards = tuple(Shard(f, tuple(g)) for f, g in zip(files, groups))
    return ShardPlan(shards, tuple(tuple(e.name for e in u) for u in units))


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, as safetensors stores them."""
    return memoryview(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())


class ShardedWriter:
    """Writes the tensors of a `ShardPlan` into `directory`, in plan order, tracking each file's sha256.

    `write(name, tensor)` must be called for every tensor in plan order; `finish()` checks that
    all were written, writes the index (several shards) and returns {filename: sha256}.
    resume_units: reopen after the first `resume_units` units were written by an earlier run.
    """

    def __init__(self, directory: Path, plan: ShardPlan, metadata: dict[str, str], resume_units: int = 0) -> None:
        self.dir, self.plan, self.metadata = Path(directory), plan, metadata
        self._order = [(si, e) for si, s in enumerate(plan.shards) for e in s.entries]
        self._pos = 0  # next entry in _order
        self._file = None
        self._shard = -1
        self._hash = None
        self.digests: dict[str, str] = {}
        if resume_units:
            self._resume(sum(len(u) for u in plan.units[:resume_units]))

    def _open(self, si: int, truncate_at: int | None = None) -> None:
        self._close()
        shard = self.plan.shards[si]
        path = self.dir / shard.filename
        self._hash = hashlib.sha256()
        if truncate_at is None:
            self._file = open(path, "wb")  # noqa: SIM115 - kept open across calls
            head = shard.header(self.metadata)
            self._file.write(head)
            self._hash.update(head)
        else:
            with open(path, "r+b") as f:
                f.truncate(truncate_at)
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    self._hash.update(chunk)
            self._file = open(path, "ab")  # noqa: SIM115
        self._shard = si

    def _resume(self, written: int) -> None:
        """Reopen after `written` tensors: earlier shards are done, the current one is cut back."""
        self._pos = written
        if written == 0:
            return
        si = self._order[written - 1][0]
        done_in_shard = [e for s, e in self._order[:written] if s == si]
        for prev in range(si):
            self.digests[self.plan.shards[prev].filename] = _sha256(self.dir / self.plan.shards[prev].filename)
        head = len(self.plan.shards[si].header(self.metadata))
        end = head + sum(e.nbytes for e in done_in_shard)
        path = self.dir / self.plan.shards[si].filename
        if not path.is_file() or path.stat().st_size < end:
            raise ShardError(f"{path} is shorter than the {written} tensors the resume state records: start over")
        self._open(si, truncate_at=end)
        if len(done_in_shard) == len(self.plan.shards[si].entries):
            self._seal()

    def write(self, name: str, t: torch.Tensor) -> None:
        if self._pos >= len(self._order):
            raise ShardError(f"tensor {name} is not in the plan (all planned tensors are written)")
        si, e = self._order[self._pos]
        if name != e.name or t.dtype != e.dtype or tuple(t.shape) != e.shape:
            raise ShardError(f"tensor {name} {t.dtype} {tuple(t.shape)} arrived where the plan expects "
                             f"{e.name} {e.dtype} {e.shape}")
        if si != self._shard:
            self._open(si)
        data = tensor_bytes(t)
        self._file.write(data)
        self._hash.update(data)
        self._pos += 1
        if self._pos == len(self._order) or self._order[self._pos][0] != si:
            self._seal()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def _seal(self) -> None:
        name = self.plan.shards[self._shard].filename
        self._close()
        self.digests[name] = self._hash.hexdigest()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def next_name(self) -> str | None:
        return self._order[self._pos][1].name if self._pos < len(self._order) else None

    def finish(self) -> dict[str, str]:
        if self._pos != len(self._order):
            raise ShardError(f"tensor {self._order[self._pos][1].name} was never written")
        self._close()
        if len(self.plan.shards) > 1:
            (self.dir / INDEX_FILE).write_text(json.dumps(self.plan.index(), indent=2) + "\n", encoding="utf-8")
        return dict(self.digests)

    def close(self) -> None:
        self._close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_files(directory: Path) -> list[str]:
    """The safetensors files of a model directory: the index's shards, or the single file ([] when neither).

    Raises ShardError naming the index when it is not JSON with a weight_map of file names.
    """
    d = Path(directory)
    index = d / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ShardError(f"{index} is not a valid safetensors index ({e})") from e
    return [SINGLE_FILE] if (d / SINGLE_FILE).is_file() else []
