"""Tiny random causal LMs for the evaluation tests (seconds, no download)."""

from __future__ import annotations

import pytest
import torch


def make_tiny_llama(vocab_size: int = 64, max_positions: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def make_llama():
    """The factory itself: make_llama(vocab_size=64, max_positions=64, seed=0)."""
    return make_tiny_llama


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()
