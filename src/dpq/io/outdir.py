"""Claiming, writing and publishing an output directory without ever losing or mixing data.

A run that writes `--out DIR` works in a hidden sibling, `.DIR.dpq-partial/`:

    .DIR.dpq-partial/            locked (flock) while a run works in it; a second run is refused
        checkpoint/              the files being written; renamed to DIR at the end
        state.json, inputs/      what a restart needs (dpq.io.resume)

Publishing renames `checkpoint/` to DIR with RENAME_NOREPLACE, so a DIR that appeared meanwhile
(another process, the user) is never replaced: the run refuses and keeps its result. With
`overwrite`, DIR is swapped with RENAME_EXCHANGE (at every instant either the old or the new
checkpoint is at DIR), and only a dpq checkpoint or an empty directory is ever replaced. The
whole hidden directory is removed at the end. A partial directory left by a dead run (the lock is
free) is resumed, published or removed by the next run, and named when it cannot be.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


class OutputError(ValueError):
    """The output directory cannot be used or published; the message says why and what to do."""


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.dpq-partial"


def _inside(a: Path, b: Path) -> bool:
    """a is b or lies inside b (both resolved)."""
    return a == b or b in a.parents


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _is_dpq_checkpoint(p: Path) -> bool:
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    block = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return isinstance(block, dict) and block.get("quant_method") == "dpq"


def check_output(out: str | os.PathLike, overwrite: bool = False, protected: tuple = (),
                 flag: str = "--out") -> Path:
    """Refuse an output path that cannot or must not be written, before any work.

    protected: paths (the source model's directory or file) that the output must neither be, lie
    inside, nor contain. Returns the output as an absolute path.
    """
    out = Path(os.path.abspath(os.path.expanduser(str(out))))
    real = out.resolve()
    cwd = Path.cwd().resolve()
    if _inside(cwd, real):
        raise OutputError(f"{flag} {out} is the current directory or contains it: give a new directory's path")
    for p in protected:
        if p is None:
            continue
        src = Path(p).expanduser().resolve()
        if _inside(real, src) or _inside(src, real):
            raise OutputError(f"{flag} {out} overlaps the source model {src}: write the checkpoint somewhere else")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputError(f"{flag} {out} is a file, not a directory: choose a directory path")
        if not overwrite:
            raise OutputError(f"{flag} {out} already exists: choose another directory or pass --overwrite")
        if any(out.iterdir()) and not _is_dpq_checkpoint(out):
            raise OutputError(f"{flag} {out} is not a dpq checkpoint (no dpq config.json): --overwrite only "
                              "replaces a dpq checkpoint or an empty directory; remove it yourself or choose another")
    parent = _nearest_existing(out.parent)
    if not parent.is_dir():
        raise OutputError(f"{flag} {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: the directory {parent} is not writable: choose a directory you can write to")
    return out


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename src to dst; FileExistsError if dst exists (atomically where the OS supports it)."""
    try:
        _renameat2(src, dst, _RENAME_NOREPLACE)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
        if dst.exists() or dst.is_symlink():  # fallback: a small window remains
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        os.rename(src, dst)


def exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically where the OS supports it (else two renames through a third name)."""
    try:
        _renameat2(a, b, _RENAME_EXCHANGE)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
        tmp = a.with_name(a.name + ".swap")
        os.rename(b, tmp)
        os.rename(a, b)
        os.rename(tmp, a)


@dataclass
class Claim:
    """A locked partial directory: `checkpoint` is where the files go; `stale` what was found there."""

    out: Path
    root: Path
    fd: int
    found: bool  # the partial directory existed (left by a dead run)

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    def release(self, remove: bool = True) -> None:
        """Give up the lock, removing the partial directory first when `remove`."""
        try:
            if remove:
                shutil.rmtree(self.root, ignore_errors=True)
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def claim(out: Path) -> Claim:
    """Create (or take over from a dead run) and lock `out`'s partial directory.

    Raises OutputError when another live run holds it.
    """
    root = partial_dir(out)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir()
        found = False
    except FileExistsError:
        found = True
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputError(f"another dpq run is writing {out} (it holds {root}): wait for it to finish or choose "
                          "another --out") from None
    if not root.is_dir():  # removed by the run that held it between our open and our lock
        os.close(fd)
        return claim(out)
    c = Claim(out, root, fd, found)
    c.checkpoint.mkdir(exist_ok=True)
    return c


def publish(c: Claim, overwrite: bool) -> Path:
    """Move the finished checkpoint to `out` (see the module doc) and remove the partial directory."""
    out = c.out
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputError(f"{out} appeared while this run was writing it; nothing was replaced and the finished "
                              f"checkpoint is kept in {c.checkpoint}: move it yourself, or run again with --overwrite")
        if not out.is_dir() or (any(out.iterdir()) and not _is_dpq_checkpoint(out)):
            raise OutputError(f"{out} was replaced by something that is not a dpq checkpoint while this run was "
                              f"writing; nothing was replaced and the finished checkpoint is kept in {c.checkpoint}")
        exchange(c.checkpoint, out)  # the old checkpoint is now at c.checkpoint, inside the partial directory
    else:
        try:
            rename_noreplace(c.checkpoint, out)
        except FileExistsError:
            return publish(c, overwrite)
    c.release(remove=True)
    return out
