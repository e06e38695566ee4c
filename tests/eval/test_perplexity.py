import math

import pytest
import torch

from dpq.eval.perplexity import PerplexityError, perplexity_of_ids


def hand_ppl(model, ids: torch.Tensor, seq_len: int, windows: int) -> float:
    """exp(mean over windows of the mean NLL of tokens 1..T-1), written out token by token."""
    window_nlls = []
    with torch.no_grad():
        for w in range(windows):
            x = ids[w * seq_len : (w + 1) * seq_len]
            logp = torch.log_softmax(model(input_ids=x[None]).logits[0].double(), dim=-1)
            nll = [-logp[t - 1, x[t]].item() for t in range(1, seq_len)]
            window_nlls.append(sum(nll) / len(nll))
    return math.exp(sum(window_nlls) / len(window_nlls))


def test_perplexity_equals_hand_computed_mean_nll(tiny_llama):
    ids = torch.randint(0, 64, (70,), generator=torch.Generator().manual_seed(1))
    res = perplexity_of_ids(tiny_llama, ids, seq_len=16)
    assert (res.windows_used, res.windows_total, res.tokens) == (4, 4, 70)  # the last 6 tokens are dropped
    assert res.ppl == pytest.approx(hand_ppl(tiny_llama, ids, 16, 4), rel=1e-5)  # fp32 logits vs fp64 sum


def test_max_windows_uses_the_first_windows(tiny_llama):
    ids = torch.randint(0, 64, (1, 64), generator=torch.Generator().manual_seed(2))
    res = perplexity_of_ids(tiny_llama, ids, seq_len=16, max_windows=2)
    assert (res.windows_used, res.windows_total) == (2, 4)
    assert res.ppl == pytest.approx(hand_ppl(tiny_llama, ids[0], 16, 2), rel=1e-5)


def test_seq_len_longer_than_context_is_refused(make_llama):
    model = make_llama(max_positions=32)
    with pytest.raises(PerplexityError, match="max_position_embeddings"):
        perplexity_of_ids(model, torch.zeros(100, dtype=torch.long), seq_len=64)


def test_too_few_tokens_is_refused(tiny_llama):
    with pytest.raises(PerplexityError, match="fewer than one window"):
        perplexity_of_ids(tiny_llama, torch.zeros(10, dtype=torch.long), seq_len=16)
