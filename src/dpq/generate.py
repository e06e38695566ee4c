"""Greedy text generation with a dpq checkpoint or a float model."""

from __future__ import annotations

import torch


def generate(path: str, prompt: str, max_new_tokens: int = 32, device: str = "cpu") -> str:
    """The prompt followed by up to `max_new_tokens` greedily generated tokens."""
    if max_new_tokens <= 0:
        raise ValueError(f"--max-new-tokens={max_new_tokens}: must be positive")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("--prompt is empty: give the text the model should continue")
    from dpq.api import load_any  # noqa: PLC0415

    model, tok, _ = load_any(path, device)
    ids = tok(prompt, return_tensors="pt").to(device)
    if ids.input_ids.shape[1] == 0:
        raise ValueError(f"--prompt {prompt!r} gives no tokens with this tokenizer: give some text")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0], skip_special_tokens=True)
