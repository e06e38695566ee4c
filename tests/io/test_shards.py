"""The streaming shard writer: plain safetensors files, packing, sizes, resume at a unit boundary."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dpq.io.shards import INDEX_FILE, SINGLE_FILE, ShardedWriter, ShardError, TensorEntry, parse_size, plan_shards


def _units():
    torch.manual_seed(0)
    tensors = {
        "a.weight": torch.randn(8, 16, dtype=torch.bfloat16),   # 256 bytes
        "a.codes": torch.randint(0, 255, (7, 3), dtype=torch.uint8),  # 21 bytes: odd offsets follow
        "b.scale": torch.tensor(0.5),
        "b.weight": torch.randn(16, 16),                         # 1024 bytes
        "c.weight": torch.randn(4, 4, dtype=torch.float16),
    }
    units = [["a.weight", "a.codes"], ["b.scale", "b.weight"], ["c.weight"]]
    return tensors, [[TensorEntry.of(n, tensors[n]) for n in u] for u in units]


def _write(d, tensors, plan, metadata=None):
    w = ShardedWriter(d, plan, metadata or {"format": "pt"})
    for u in plan.units:
        for n in u:
            w.write(n, tensors[n])
    return w.finish()


@pytest.mark.parametrize("size", ["20KB", 1300, 600])
def test_written_files_read_back_exactly(tmp_path, size):
    tensors, units = _units()
    plan = plan_shards(units, parse_size(size))
    _write(tmp_path, tensors, plan)
    got = {}
    for f in plan.filenames:
        got.update(load_file(tmp_path / f))
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)
    if len(plan.shards) == 1:
        assert plan.filenames == [SINGLE_FILE] and not (tmp_path / INDEX_FILE).exists()
    else:
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
        assert set(index["weight_map"].values()) == set(plan.filenames)


def test_units_stay_together_and_shards_respect_the_size():
    _, units = _units()
    plan = plan_shards(units, 1300)  # unit a (277 B) + unit b (1028 B) do not fit together
    assert [[e.name for e in s.entries] for s in plan.shards] == [["a.weight", "a.codes"], ["b.scale", "b.weight",
                                                                                           "c.weight"]]
    assert all(s.data_bytes <= 1300 for s in plan.shards)
    big = plan_shards(units, 100)  # a unit larger than a shard is split; a tensor larger than it stands alone
    assert all(len(s.entries) == 1 or s.data_bytes <= 100 for s in big.shards)


def test_same_tensors_same_bytes(tmp_path):
    tensors, units = _units()
    plan = plan_shards(units, 600)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    da = _write(a, tensors, plan, {"z": "1", "a": "2", "m": "3"})
    db = _write(b, tensors, plan, {"m": "3", "a": "2", "z": "1"})
    assert da == db
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in plan.filenames)


def test_resume_cuts_back_to_the_unit_boundary(tmp_path):
    tensors, units = _units()
    plan = plan_shards(units, 20_000)
    ref = tmp_path / "ref"
    ref.mkdir()
    digests = _write(ref, tensors, plan)
    w = ShardedWriter(tmp_path, plan, {"format": "pt"})
    for n in ["a.weight", "a.codes", "b.scale"]:  # unit 0, then half of unit 1, then a crash
        w.write(n, tensors[n])
    w.flush()
    w.close()
    w = ShardedWriter(tmp_path, plan, {"format": "pt"}, resume_units=1)
    assert w.next_name() == "b.scale"
    for n in ["b.scale", "b.weight", "c.weight"]:
        w.write(n, tensors[n])
    assert w.finish() == digests
    assert (tmp_path / SINGLE_FILE).read_bytes() == (ref / SINGLE_FILE).read_bytes()


def test_out_of_order_or_wrong_tensors_are_refused(tmp_path):
    tensors, units = _units()
    w = ShardedWriter(tmp_path, plan_shards(units, 20_000), {})
    with pytest.raises(ShardError, match="a.codes .* arrived where the plan expects a.weight"):
        w.write("a.codes", tensors["a.codes"])
    with pytest.raises(ShardError, match="expects a.weight"):
        w.write("a.weight", tensors["a.weight"].float())
    w.write("a.weight", tensors["a.weight"])
    with pytest.raises(ShardError, match="a.codes was never written"):
        w.finish()
    with pytest.raises(ShardError, match="planned twice"):
        plan_shards([units[0], units[0]], 100)


@pytest.mark.parametrize("text,expected", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30),
                                           ("1.5kb", 1500), (4096, 4096)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "five GB", "5XB", "0GB", -3, "-1MB"])
def test_parse_size_refuses_nonsense(bad):
    with pytest.raises(ShardError, match="shard size"):
        parse_size(bad)
