"""JSON result files written whole or not at all: readers never see half a file, and a run stopped
while writing leaves the previous version."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write obj as JSON to path through a temporary file beside it and an atomic rename; parent
    folders are created. Values JSON cannot hold are written as their str()."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path
