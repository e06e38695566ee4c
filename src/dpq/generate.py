"""Greedy text generation with a dpq checkpoint or a float model."""

from __future__ import annotations

import torch


def load_any(path: str | None, device: str = "cpu"):
    """(model, tokenizer) for a dpq checkpoint directory or any float model dpq can load."""
    from dpq.io.checkpoint import is_checkpoint  # noqa: PLC0415

    if path is not None and is_checkpoint(path):
        from dpq.api import load  # noqa: PLC0415

        return load(path, device=device)
    from dpq.models.loading import load_float_model  # noqa: PLC0415

    model, tok, _ = load_float_model(path, device=device)
    return model, tok


def generate(path: str, prompt: str, max_new_tokens: int = 32, device: str = "cpu") -> str:
    """The prompt followed by up to `max_new_tokens` greedily generated tokens."""
    if max_new_tokens <= 0:
        raise ValueError(f"--max-new-tokens={max_new_tokens}: must be positive")
    model, tok = load_any(path, device)
    ids = tok(prompt, return_tensors="pt").to(device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0], skip_special_tokens=True)
