"""WikiText-2 perplexity with the GPTQ protocol.

The test rows are joined with "\\n\\n", tokenized once, and cut into
non-overlapping windows of `seq_len` tokens (the partial last window is
dropped). Each window's NLL is the mean token NLL inside it (seq_len - 1
predicted tokens; no context carries over between windows); the perplexity is
exp(mean over windows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

LOSS_DTYPE = torch.float32
"""Logits are upcast to this before the log-softmax."""


class PerplexityError(ValueError):
    """Perplexity cannot be computed with these settings; the message says what to change."""


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float
    windows_used: int
    windows_total: int
    seq_len: int
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def model_context(model) -> int | None:
    """The longest sequence the model accepts (config.max_position_embeddings), or None if unknown."""
    cfg = model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(text_cfg, "max_position_embeddings", None)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def check_seq_len(model, seq_len: int) -> None:
    if seq_len < 2:
        raise PerplexityError(f"seq_len={seq_len}: need at least 2 tokens per window")
    ctx = model_context(model)
    if ctx is not None and seq_len > ctx:
        raise PerplexityError(
            f"seq_len={seq_len} is longer than the model's context ({ctx} tokens, "
            f"config.max_position_embeddings): use --seq-len {min(ctx, 2048)} or less"
        )


@torch.inference_mode()
def window_nll(model, window: torch.Tensor) -> float:
    """Mean NLL of the tokens 1..T-1 of one window [1, T] given the tokens before them."""
    logits = model(input_ids=window).logits  # (1, T, V)
    logits = logits[:, :-1, :].to(LOSS_DTYPE)  # (1, T-1, V): predictions for tokens 1..T-1
    targets = window[:, 1:]  # (1, T-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()


def perplexity_of_ids(
    model,
    ids: torch.Tensor,
    seq_len: int,
    max_windows: int | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of a token sequence `ids` ([N] or [1, N]) in non-overlapping windows of `seq_len`.

    exp(mean over windows of the window's mean token NLL); the partial last
    window is dropped; `max_windows` evaluates only the first windows.
    """
    check_seq_len(model, seq_len)
    ids = ids.reshape(-1)  # (N,)
    total = ids.numel() // seq_len
    if total == 0:
        raise PerplexityError(
            f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}: lower seq_len"
        )
    if max_windows is not None and max_windows < 1:
        raise PerplexityError(f"max_windows={max_windows}: use a positive number or None for all")
    used = total if max_windows is None else min(total, max_windows)
    device = _model_device(model)
    windows = range(used)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        windows = tqdm(windows, desc=f"perplexity (seq_len {seq_len})", unit="window")
    was_training = model.training
    model.eval()
    nlls = []
    for i in windows:
        window = ids[i * seq_len : (i + 1) * seq_len].unsqueeze(0).to(device)  # (1, seq_len)
        nlls.append(window_nll(model, window))
    model.train(was_training)
    nll = sum(nlls) / len(nlls)
    return PerplexityResult(
        ppl=float(torch.tensor(nll, dtype=torch.float64).exp()),
        nll=nll,
        windows_used=used,
        windows_total=total,
        seq_len=seq_len,
        tokens=ids.numel(),
    )


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """Token ids [N] of the whole text, tokenized once (special tokens as the tokenizer adds them)."""
    return tokenizer(text, return_tensors="pt").input_ids[0]


def wikitext2_perplexity(
    model,
    tokenizer,
    seq_len: int = 2048,
    max_windows: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """WikiText-2 test perplexity of a causal LM (GPTQ protocol), on the device the model is on."""
    from dpq.io.data import wikitext2_test_text  # noqa: PLC0415

    check_seq_len(model, seq_len)  # fail before reading and tokenizing 1.3 MB of text
    ids = tokenize_text(tokenizer, wikitext2_test_text())
    return perplexity_of_ids(model, ids, seq_len, max_windows=max_windows, progress=progress)
