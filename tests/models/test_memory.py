"""The calibration-memory estimate and the refusal before calibrating when it cannot fit."""

from __future__ import annotations

import pytest

from dpq.config import ConfigError, QuantConfig
from dpq.models import memory
from dpq.models.memory import activation_bytes, check_activation_memory

WIDTHS = [4096, 4096, 4096, 14336]  # Llama-3-8B's sets: q/k/v, o, gate/up, down


def test_estimate_by_method():
    tokens = 128 * 2048
    gar = activation_bytes(4096, WIDTHS, 4096, tokens, 2, QuantConfig.for_method("dpq-gar"))
    plus = activation_bytes(4096, WIDTHS, 4096, tokens, 2, QuantConfig.for_method("dpq-gar-plus"))
    assert gar == (2 * 4096 + 4096) * tokens * 2  # inputs, outputs, recorded attention outputs
    assert plus == gar + (2 * 4096 + sum(WIDTHS) + 14336) * tokens * 2  # float stream + the set being solved
    assert activation_bytes(4096, WIDTHS, 4096, tokens, 2, QuantConfig.for_method("rtn-w4a16")) == 0


def test_refused_only_when_it_cannot_fit():
    check_activation_memory(10, 100, 5, None)
    check_activation_memory(200, 100, 5, "/tmp/offload")  # offloaded: memory-mapped files instead
    check_activation_memory(200, None, 5, None)  # unknown RAM: no guess
    with pytest.raises(ConfigError, match="--offload-dir"):
        check_activation_memory(200 * memory.GIB, 100 * memory.GIB, 5, None)


def test_cli_refuses_before_calibrating(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    from dpq.cli import main

    monkeypatch.setattr(memory, "available_bytes", lambda: 1024)
    out = tmp_path / "q"
    args = ["quantize", str(tiny_llama_dir), "--out", str(out), "--method", "dpq-gar-plus", "--group-size", "32",
            "--calib-samples", "4", "--calib-seq-len", "32"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "GiB of activations in memory (128 tokens)" in err and "--offload-dir" in err
    assert not out.exists()  # (with --offload-dir the run goes ahead: tests/io/test_streaming.py)


def test_python_api_refuses_before_calibrating(tiny_llama_dir, monkeypatch):
    import torch

    import dpq
    from dpq.models.loading import load_float_model

    model, tok, _ = load_float_model(str(tiny_llama_dir))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1024)
    before = model.model.layers[0].mlp.down_proj.weight.clone()
    with pytest.raises(ConfigError, match="offload_dir=DIR"):
        dpq.quantize(model, tok, QuantConfig.for_method(group_size=32), calib=torch.randint(0, 100, (4, 32)))
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, before)  # nothing was touched
