"""Shared fixtures: real models are loaded once per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- real models (slow) -------------------------------------------------------

@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the bundled SmolLM2-135M-Instruct, float32, eval mode. Do not modify: deepcopy."""
    from dpq.models.loading import load_float_model

    model, tok, _ = load_float_model(None)
    return model, tok


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from dpq.models.loading import load_tokenizer, resolve

    return load_tokenizer(resolve(None))


# --- tiny random models (fast) ------------------------------------------------

@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer):
    """A 2-layer randomly initialised Llama (hidden 96, K=96 and 160) with SmolLM2's tokenizer, saved to disk."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    d = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(d)
    smollm2_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_rtn_checkpoint(tmp_path_factory, tiny_llama_dir):
    """A dpq checkpoint (rtn-w4a8, g32) of the tiny Llama, with tokenizer. Read only: copy it to change it."""
    import dpq
    from dpq.models.loading import load_float_model

    model, tok, _ = load_float_model(str(tiny_llama_dir))
    cfg = dpq.QuantConfig.for_method("rtn-w4a8", group_size=32)
    result = dpq.quantize(model, tok, cfg, calib=torch.randint(0, 1000, (1, 16)), progress=False)
    return dpq.save(result, tmp_path_factory.mktemp("tiny-rtn") / "ck")


@pytest.fixture()
def no_calibration(monkeypatch):
    """Fail the test if quantization gets as far as drawing calibration data or running the driver."""
    import dpq.api
    import dpq.io.data
    import dpq.pipeline

    def calibrate(*_a, **_k):
        pytest.fail("the bad input was only noticed after calibration started")

    monkeypatch.setattr(dpq.io.data, "calibration_batches", calibrate)
    monkeypatch.setattr(dpq.api, "quantize_model", calibrate)
    monkeypatch.setattr(dpq.pipeline, "quantize_model", calibrate)
