"""A damaged checkpoint in `dpq generate`, `dpq eval` and `dpq info`: one-line errors, exit code 2, no model run."""

from __future__ import annotations

import json
import shutil

import pytest

from dpq.cli import main
from dpq.io import checkpoint as ckpt


@pytest.fixture(scope="module")
def saved(tiny_rtn_checkpoint):
    return tiny_rtn_checkpoint  # every test copies it before changing it


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if any model is loaded: the errors must come before expensive work."""
    import transformers

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def _config_edit(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


def _run(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _drop_block(cfg):
    del cfg["quantization_config"]


def _rename_method(cfg):
    cfg["quantization_config"]["quant_method"] = "gptq"


@pytest.mark.parametrize("edit,what", [(_drop_block, "has no quantization_config"),
                                       (_rename_method, "quant_method 'gptq', not 'dpq'")])
def test_checkpoint_without_its_dpq_block(saved, tmp_path, capsys, edit, what, no_model_loading):
    """Case 7 and 16 of the reliability probe: never run the checkpoint as a float model with random Linears."""
    p = tmp_path / "c"
    shutil.copytree(saved, p)
    _config_edit(p, edit)
    for argv in (["generate", str(p), "--prompt", "Hi"], ["eval", str(p), "--max-windows", "1"], ["info", str(p)]):
        err = _run(capsys, *argv)
        assert f"{p} is a dpq checkpoint" in err and what in err and "restore config.json" in err


def test_format_1_checkpoint_without_its_block(saved, tmp_path, capsys, no_model_loading):
    """Format 1 (`qweight`) would even load silently as a float model with random Linears."""
    from safetensors.torch import load_file, save_file

    p = tmp_path / "c"
    shutil.copytree(saved, p)
    (p / ckpt.MANIFEST).unlink()
    t = load_file(p / ckpt.WEIGHTS)
    t = {k.removesuffix(".weight") + ".qweight" if k.endswith("proj.weight") else k: v for k, v in t.items()}
    save_file(t, p / ckpt.WEIGHTS, metadata={"format": "pt"})
    _config_edit(p, _drop_block)
    assert "holds packed INT4 Linears" in _run(capsys, "generate", str(p), "--prompt", "Hi")


def test_checkpoint_without_tokenizer(saved, tmp_path, capsys, no_model_loading):
    p = tmp_path / "c"
    shutil.copytree(saved, p)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (p / f).unlink(missing_ok=True)
    for argv in (["generate", str(p), "--prompt", "Hi"], ["eval", str(p), "--max-windows", "1"]):
        err = _run(capsys, *argv)
        assert "has no tokenizer" in err and "save_pretrained" in err


@pytest.mark.parametrize("manifest,what", [("{}", "has no valid \"files\""), ("[1, 2", "is not valid JSON")])
def test_broken_manifest_is_named(saved, tmp_path, capsys, manifest, what):
    p = tmp_path / "c"
    shutil.copytree(saved, p)
    (p / ckpt.MANIFEST).write_text(manifest)
    for argv in (["info", str(p)], ["generate", str(p), "--prompt", "Hi"]):
        err = _run(capsys, *argv)
        assert f"{p / ckpt.MANIFEST} {what}" in err
