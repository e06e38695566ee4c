"""What an interrupted quantization run keeps so that the same command resumes it.

Inside the run's partial directory (dpq.io.outdir):

    state.json         fingerprint of the settings, the calibration tokens, the source and the plan;
                       how many checkpoint units are written; the report rows so far; "done"
    inputs-<i>/        decoder layer i's calibration inputs, one safetensors file per batch

After layer i is written: its outputs (layer i + 1's inputs) are saved, then the state is replaced
atomically, then layer i's inputs are removed, so at every instant the state names inputs that exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dpq.io.jsonfile import write_json_atomic

STATE = "state.json"


class ResumeError(ValueError):
    """A partial run cannot be resumed; the message says what to do."""


def fingerprint(parts: dict) -> str:
    """sha256 of the JSON of everything that determines the run's output."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_state(root: Path) -> dict | None:
    """The state of the run that worked in `root`, or None when it never wrote one."""
    f = Path(root) / STATE
    if not f.is_file():
        return None
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ResumeError(f"{f} is not valid JSON ({e}): pass --restart to start over") from e
    if not isinstance(state, dict) or "fingerprint" not in state or "units_done" not in state:
        raise ResumeError(f"{f} is not a dpq run state: pass --restart to start over")
    return state


def write_state(root: Path, state: dict) -> None:
    """Replace state.json atomically."""
    write_json_atomic(Path(root) / STATE, state, indent=1)


def inputs_dir(root: Path, layer: int) -> Path:
    return Path(root) / f"inputs-{layer:05d}"


def save_inputs(root: Path, layer: int, hidden) -> str:
    """Write layer `layer`'s inputs (a list of [b, T, H] tensors); returns the folder's name."""
    d = inputs_dir(root, layer)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for b, x in enumerate(hidden):
        save_file({"x": x.contiguous()}, str(tmp / f"batch-{b:05d}.safetensors"))
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    return d.name


def load_inputs(root: Path, name: str, new_list=list) -> list[torch.Tensor]:
    """The inputs `save_inputs` wrote, in batch order, appended to new_list()."""
    d = Path(root) / name
    files = sorted(d.glob("batch-*.safetensors"))
    if not d.is_dir() or not files:
        raise ResumeError(f"{d} with the next layer's inputs is missing: pass --restart to start over")
    out = new_list()
    for f in files:
        out.append(load_file(str(f))["x"])
    return out


def drop_inputs_except(root: Path, keep: str | None) -> None:
    for d in Path(root).glob("inputs-*"):
        if d.name != keep:
            shutil.rmtree(d, ignore_errors=True)
