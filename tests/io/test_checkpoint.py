"""Checkpoint round trip and refusal of wrong or corrupted checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import dpq
from dpq.config import CalibSpec, QuantConfig
from dpq.io import checkpoint as ckpt
from dpq.io.checkpoint import CheckpointError
from dpq.io.outdir import OutputError
from dpq.models.loading import load_float_model


@pytest.fixture(scope="module")
def quantized(tiny_llama_dir):
    model, tok, _ = load_float_model(str(tiny_llama_dir))
    cfg = QuantConfig.for_method("dpq-gar", group_size=64, calib=CalibSpec(samples=4, seq_len=64))
    result = dpq.quantize(model, tok, cfg, progress=False)
    return model, tok, cfg, result


@pytest.fixture(scope="module")
def saved(quantized, tmp_path_factory):
    model, tok, cfg, result = quantized
    out = tmp_path_factory.mktemp("ckpt") / "q"
    dpq.save(result, out)
    return out


def _copy(saved, tmp_path):
    dst = tmp_path / "c"
    shutil.copytree(saved, dst)
    return dst


def _rewrite_tensors(path, fn):
    """Change the safetensors file and refresh the manifest (so only the tensor check can catch it)."""
    f = path / ckpt.WEIGHTS
    t = load_file(f)
    fn(t)
    save_file(t, f, metadata={"format": "pt"})
    man = json.loads((path / ckpt.MANIFEST).read_text())
    man["files"][ckpt.WEIGHTS] = {"sha256": ckpt._sha256(f), "bytes": f.stat().st_size}
    (path / ckpt.MANIFEST).write_text(json.dumps(man))


def test_reload_gives_the_same_logits(quantized, saved):
    model, tok, _, _ = quantized
    loaded, ltok = dpq.load(saved)
    ids = tok("A saved and reloaded checkpoint must compute the same function.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert ltok(["hello there"]).input_ids == tok(["hello there"]).input_ids


def test_config_records_settings_and_calibration(saved):
    block = json.loads((saved / "config.json").read_text())["quantization_config"]
    assert block["quant_method"] == "dpq" and block["method"] == "dpq-gar"
    assert block["format_version"] == dpq.config.FORMAT_VERSION
    assert QuantConfig.from_dict(block["settings"]).weight.group_size == 64
    assert len(block["calibration"]["fingerprint"]) == 64
    assert len(block["modules"]) == 14


def test_info_reports_ratio_below_point_three(saved):
    info = dpq.info(saved)
    assert info["quantized_linears"] == 14
    assert 0.25 < info["ratio_to_bf16"] <= 0.3


def test_top_token_shares_are_stored_for_every_calibrated_linear(quantized, saved):
    model, _, _, _ = quantized
    block = json.loads((saved / "config.json").read_text())["quantization_config"]
    shares = block["top_token_share"]
    assert set(shares) == set(block["modules"]) and shares == quantized[3].summary.top_token_shares()
    assert all(1 / 256 - 1e-4 <= v <= 1 for v in shares.values())  # 256 tokens, stored to 4 decimals
    from dpq.models.driver import concentrated

    assert dpq.info(saved)["concentrated"] == concentrated(shares)


def test_checkpoint_without_shares_reads_as_none_flagged(saved, tmp_path):
    """Checkpoints written before the shares were stored load, and `info` flags nothing."""
    dst = _copy(saved, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    del cfg["quantization_config"]["top_token_share"]
    (dst / "config.json").write_text(json.dumps(cfg))
    man = json.loads((dst / ckpt.MANIFEST).read_text())
    man["files"]["config.json"] = {"sha256": ckpt._sha256(dst / "config.json"), "bytes": (dst / "config.json").stat().st_size}
    (dst / ckpt.MANIFEST).write_text(json.dumps(man))
    assert dpq.info(dst)["concentrated"] == {}
    dpq.load(dst)


def test_existing_output_is_refused(quantized, saved):
    with pytest.raises(OutputError, match="already exists"):
        dpq.save(quantized[3], saved)


def test_failed_save_leaves_nothing(quantized, tmp_path, monkeypatch):
    from dpq.io import shards

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(shards, "tensor_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        dpq.save(quantized[3], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_tensor(saved, tmp_path):
    p = _copy(saved, tmp_path)
    _rewrite_tensors(p, lambda t: t.pop("model.layers.0.self_attn.q_proj.scales"))
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.q_proj.scales is missing"):
        dpq.load(p)


def test_extra_tensor(saved, tmp_path):
    p = _copy(saved, tmp_path)
    _rewrite_tensors(p, lambda t: t.__setitem__("model.bogus", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"model.bogus is not part of this model"):
        dpq.load(p)


def test_wrong_shape(saved, tmp_path):
    p = _copy(saved, tmp_path)
    key = "model.layers.1.mlp.down_proj.weight"
    _rewrite_tensors(p, lambda t: t.__setitem__(key, t[key][:, :-1].contiguous()))
    with pytest.raises(CheckpointError, match=rf"{key} has shape"):
        dpq.load(p)


def test_wrong_dtype(saved, tmp_path):
    p = _copy(saved, tmp_path)
    key = "model.layers.1.mlp.up_proj.zeros"
    _rewrite_tensors(p, lambda t: t.__setitem__(key, t[key].to(torch.int32)))
    with pytest.raises(CheckpointError, match=rf"{key} has dtype torch.int32"):
        dpq.load(p)


def test_nan_scales(saved, tmp_path):
    p = _copy(saved, tmp_path)
    key = "model.layers.0.mlp.gate_proj.scales"

    def poison(t):
        t[key] = t[key].clone()
        t[key][0, 0] = float("nan")

    _rewrite_tensors(p, poison)
    with pytest.raises(CheckpointError, match=rf"{key} holds NaN"):
        dpq.load(p)


def test_unknown_format_version(saved, tmp_path):
    p = _copy(saved, tmp_path)
    cfg = json.loads((p / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 99
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format version 99"):
        dpq.load(p)


def test_truncated_file(saved, tmp_path):
    p = _copy(saved, tmp_path)
    f = p / ckpt.WEIGHTS
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        dpq.load(p)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        ckpt.read_tensors(p)


def test_corrupted_bytes(saved, tmp_path):
    p = _copy(saved, tmp_path)
    f = p / ckpt.WEIGHTS
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        dpq.load(p)


def test_not_a_checkpoint(tiny_llama_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no dpq quantization_config"):
        dpq.load(tiny_llama_dir)
    with pytest.raises(CheckpointError, match="not a directory"):
        dpq.load(tmp_path / "nope")


def test_settings_written_before_skip_first_still_load(saved):
    """A checkpoint whose calib settings predate `skip_first` reads as skip_first=0."""
    block = json.loads((saved / "config.json").read_text())["quantization_config"]
    settings = json.loads(json.dumps(block["settings"]))
    del settings["calib"]["skip_first"]
    cfg = QuantConfig.from_dict(settings)
    assert cfg.calib.skip_first == 0
    assert cfg == QuantConfig.from_dict(block["settings"])  # what `dpq compare --save-dir` compares


def _as_version_1(path):
    """Rewrite a checkpoint as format version 1 wrote it: packed codes under `qweight`."""
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 1
    cfg["quantization_config"]["settings"]["format_version"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    modules = cfg["quantization_config"]["modules"]
    _rewrite_tensors(path, lambda t: [t.__setitem__(f"{m}.qweight", t.pop(f"{m}.weight")) for m in modules])
    man = json.loads((path / ckpt.MANIFEST).read_text())
    f = path / "config.json"
    man["files"]["config.json"] = {"sha256": ckpt._sha256(f), "bytes": f.stat().st_size}
    (path / ckpt.MANIFEST).write_text(json.dumps(man))


def test_format_version_1_still_loads(quantized, saved, tmp_path):
    model, tok, _, _ = quantized
    old = _copy(saved, tmp_path)
    _as_version_1(old)
    assert "model.layers.0.mlp.down_proj.qweight" in load_file(old / ckpt.WEIGHTS)
    loaded, _ = dpq.load(old)
    ids = tok("Version 1 checkpoints keep loading.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    info = dpq.info(old)
    assert info["quantized_linears"] == 14 and 0.25 < info["ratio_to_bf16"] <= 0.3
