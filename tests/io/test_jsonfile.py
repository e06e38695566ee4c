"""dpq.io.jsonfile: whole files or none."""

import json

import pytest

from dpq.io.jsonfile import write_json_atomic


def test_writes_creates_folders_and_replaces_whole(tmp_path):
    out = write_json_atomic(tmp_path / "a" / "b.json", {"x": 1, "p": tmp_path})
    assert json.loads(out.read_text()) == {"x": 1, "p": str(tmp_path)}
    write_json_atomic(out, [1, 2])
    assert json.loads(out.read_text()) == [1, 2] and not list(out.parent.glob("*.tmp"))


def test_a_failed_dump_leaves_the_previous_file(tmp_path):
    out = write_json_atomic(tmp_path / "r.json", {"ok": True})
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomic(out, _Circular())
    assert json.loads(out.read_text()) == {"ok": True}


class _Circular(dict):
    def __init__(self):
        super().__init__()
        self["self"] = self
