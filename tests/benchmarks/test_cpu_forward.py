"""benchmarks/cpu_forward.py on a tiny real checkpoint: the cache is exact, the table and the refusals."""

import importlib.util
import json
from pathlib import Path

import pytest

from dpq.cli import main as dpq_main
from dpq.kernels import ops

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_forward.py"
spec = importlib.util.spec_from_file_location("cpu_forward", SCRIPT)
C = importlib.util.module_from_spec(spec)
spec.loader.exec_module(C)


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu-forward") / "ckpt"
    rc = dpq_main(["quantize", str(tiny_llama_dir), "--out", str(out), "--calib-samples", "2", "--calib-seq-len", "32",
                   "--method", "rtn-w4a8", "--group-size", "32"])
    assert rc == 0
    return out


def test_runs_on_a_checkpoint_and_the_logits_are_identical(tiny_ckpt, tmp_path):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    C.main([str(tiny_ckpt), "--shapes", "1x8,2x16", "--repeats", "2", "--json", str(js), "--markdown", str(md)])
    result = json.loads(js.read_text())
    assert [(r["batch"], r["tokens"]) for r in result["rows"]] == [(1, 8), (2, 16)]
    assert all(r["identical"] and r["off_ms"] > 0 and r["on_ms"] > 0 for r in result["rows"])
    assert result["cache_bytes"] > 0 and result["device"]
    assert "| 2 x 16 |" in md.read_text() and "| yes |" in md.read_text()
    assert ops._float_cache is None  # the setting is restored


@pytest.mark.parametrize("text,message", [("1by60", "not BATCHxTOKENS"), ("0x60", "at least 1")])
def test_bad_shapes_are_refused(text, message):
    with pytest.raises(SystemExit, match=message):
        C.parse_shapes(text)


def test_float_model_is_refused(tiny_llama_dir):
    with pytest.raises(SystemExit, match="no W4A8 Linear"):
        C.main([str(tiny_llama_dir), "--shapes", "1x4", "--repeats", "1"])
