"""The output directory is never lost, replaced behind the user's back, or left half-written
(issue 24, cases 1-5 and 15); races are made deterministic with hooks, never with sleeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

import dpq
from dpq.config import CalibSpec, QuantConfig
from dpq.io import outdir
from dpq.io.outdir import OutputError, check_output, claim, partial_dir
from dpq.io.writer import CheckpointWriter

CFG = QuantConfig.for_method("rtn-w4a8", group_size=32, calib=CalibSpec(samples=2, seq_len=16))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer
    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    d = tmp_path_factory.mktemp("src") / "model"
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _quantize(model_dir, out, **kw):
    return dpq.quantize_to_disk(str(model_dir), str(out), CFG, progress=False, **kw)


def _on_finish(monkeypatch, action):
    """Run `action()` between the last write and the publication (as another process could)."""
    finish = CheckpointWriter.finish

    def hooked(self, *a, **k):
        manifest = finish(self, *a, **k)
        action()
        return manifest

    monkeypatch.setattr(CheckpointWriter, "finish", hooked)


def test_output_that_appears_during_the_run_is_not_replaced(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "q"

    def user_creates_out():
        out.mkdir()
        (out / "notes.txt").write_text("mine")

    _on_finish(monkeypatch, user_creates_out)
    with pytest.raises(OutputError, match="appeared while this run was writing"):
        _quantize(model_dir, out)
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]
    kept = partial_dir(out) / "checkpoint"
    assert (kept / "dpq_manifest.json").is_file()  # the finished work is kept, not lost
    monkeypatch.undo()
    shutil.rmtree(out)
    result = _quantize(model_dir, out)  # the same command publishes what was kept, without redoing it
    assert (result.path / "dpq_manifest.json").is_file() and not partial_dir(out).exists()


def test_an_empty_directory_that_appears_is_not_replaced_either(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "q"
    _on_finish(monkeypatch, out.mkdir)
    with pytest.raises(OutputError, match="appeared"):
        _quantize(model_dir, out)
    assert out.is_dir() and list(out.iterdir()) == []


def test_overwrite_replaces_atomically_and_a_crash_after_the_swap_is_recovered(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "q"
    _quantize(model_dir, out)
    old_manifest = (out / "dpq_manifest.json").read_text()
    other = QuantConfig.for_method("rtn-w4a8", group_size=64, calib=CalibSpec(samples=2, seq_len=16))

    swap = outdir.exchange

    def die_after_the_swap(a, b):  # killed right after the exchange, before the old one is removed
        swap(a, b)
        raise KeyboardInterrupt

    monkeypatch.setattr(outdir, "exchange", die_after_the_swap)
    with pytest.raises(KeyboardInterrupt):
        dpq.quantize_to_disk(str(model_dir), str(out), other, overwrite=True, progress=False)
    monkeypatch.undo()
    assert (out / "dpq_manifest.json").read_text() != old_manifest  # the new checkpoint is at --out
    assert json.loads((out / "config.json").read_text())["quantization_config"]["settings"]["weight"][
        "group_size"] == 64
    assert partial_dir(out).exists()  # the old one, inside the partial directory of the dead run
    result = dpq.quantize_to_disk(str(model_dir), str(out), other, overwrite=True, progress=False)
    assert result.path == out and not partial_dir(out).exists()  # recognized as published, cleaned up


def test_overwrite_never_leaves_no_checkpoint(model_dir, tmp_path, monkeypatch):
    """Interrupted before the swap: the old checkpoint is untouched at --out."""
    out = tmp_path / "q"
    _quantize(model_dir, out)
    before = (out / "dpq_manifest.json").read_text()

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(outdir, "exchange", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _quantize(model_dir, out, overwrite=True)
    assert (out / "dpq_manifest.json").read_text() == before


def test_overwrite_refuses_what_is_not_a_checkpoint(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not a dpq checkpoint"):
        check_output(d, overwrite=True)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output(f, overwrite=True)


def test_output_overlapping_the_source_is_refused(model_dir, tmp_path):
    for out, overwrite in ((model_dir, True), (model_dir / "q", False), (model_dir.parent, True)):
        with pytest.raises(OutputError, match="overlaps the source model"):
            _quantize(model_dir, out, overwrite=overwrite)
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "q").exists()


def test_output_at_the_current_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    from dpq.cli import main

    assert main(["quantize", "--out", ".", "--overwrite", "--method", "rtn-w4a16"]) == 2
    assert "current directory" in capsys.readouterr().err
    with pytest.raises(OutputError, match="current directory"):
        check_output(tmp_path.parent, overwrite=True)


def test_unwritable_output_is_refused_before_any_work(model_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: make the directory immutable instead
        if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a directory unwritable for root here (no chattr)")
    else:
        ro.chmod(0o555)
    try:
        with pytest.raises((OutputError, PermissionError)):
            _quantize(model_dir, ro / "q")
        assert list(ro.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(ro)], capture_output=True)
        else:
            ro.chmod(0o755)


def test_a_dead_runs_leftovers_are_cleaned_up(model_dir, tmp_path):
    out = tmp_path / "q"
    c = claim(out)  # a run that was SIGKILLed while saving, before its first layer was recorded
    (c.checkpoint / "model.safetensors").write_bytes(b"\0" * 4096)
    c.fd, fd = -1, c.fd
    os.close(fd)  # its lock died with it
    result = _quantize(model_dir, out)
    assert result.path == out and not partial_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_vs_float_refuses_a_checkpoint_that_is_its_own_source(model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    _quantize(model_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["source_model"] = str(out)  # what overwriting the float model in place left
    (out / "config.json").write_text(json.dumps(cfg))
    from dpq.cli import main

    assert main(["eval", str(out), "--vs-float", "--max-windows", "1", "--seq-len", "16"]) == 2
    assert "records itself as its source model" in capsys.readouterr().err
