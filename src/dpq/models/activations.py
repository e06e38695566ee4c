"""Where calibration activations live between layers: in memory (a list) or in memory-mapped files.

The driver keeps one [b, T, H] tensor per calibration batch for the current layer's inputs (and
for the attention output Linear's recorded inputs). `OffloadedList` is a list-like that writes each
appended tensor to a raw file and hands it back memory-mapped (`torch.from_file`, private mapping),
so the activations of a large calibration set need not fit in RAM.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import torch

_ids = itertools.count()


class OffloadedList:
    """append(tensor) writes it to `directory`; [i] returns it memory-mapped (read-only use)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._items: list[tuple[Path, torch.dtype, tuple[int, ...]]] = []

    def append(self, t: torch.Tensor) -> None:
        path = self.dir / f"{len(self._items):05d}.bin"
        t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tofile(path)
        self._items.append((path, t.dtype, tuple(t.shape)))

    def __getitem__(self, i: int) -> torch.Tensor:
        path, dtype, shape = self._items[i]
        numel = 1
        for d in shape:
            numel *= d
        return torch.from_file(str(path), shared=False, size=numel, dtype=dtype).view(shape)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ActivationStore:
    """Makes the lists the driver keeps activations in: plain lists, or `OffloadedList`s under `offload_dir`."""

    def __init__(self, offload_dir: str | Path | None = None) -> None:
        self.root = None
        if offload_dir is not None:
            Path(offload_dir).mkdir(parents=True, exist_ok=True)
            self.root = Path(tempfile.mkdtemp(prefix="dpq-activations-", dir=offload_dir))
        self._lists: list[OffloadedList] = []

    def new_list(self):
        if self.root is None:
            return []
        lst = OffloadedList(self.root / f"{next(_ids):06d}")
        self._lists.append(lst)
        return lst

    def release(self, lst) -> None:
        """Free a list's files once the driver no longer needs it."""
        if isinstance(lst, OffloadedList):
            lst.remove()

    def close(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
