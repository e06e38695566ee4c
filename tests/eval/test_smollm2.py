"""Real-model checks on the bundled SmolLM2-135M (slow: about a minute on two CPU cores)."""

import pytest
import torch

from dpq.eval.perplexity import perplexity_of_ids, tokenize_text
from dpq.eval.tasks import run_tasks
from dpq.io.data import data_dir, wikitext2_test_text

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(data_dir() is None, reason="no local data dir (set DPQ_DATA_DIR)"),
]


@pytest.fixture
def one_thread():
    """lm-eval runs one short forward per request; on a shared 2-core machine, 2 intra-op threads
    made these 5x slower than 1 (283 s vs 56 s for 100 requests), so the task test uses one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_smollm2_wikitext2_perplexity_is_plausible(smollm2):
    model, tok = smollm2
    ids = tokenize_text(tok, wikitext2_test_text())
    res = perplexity_of_ids(model, ids, seq_len=512, max_windows=2)
    assert (res.windows_used, res.seq_len) == (2, 512)
    assert 5 < res.ppl < 60  # a 135M model on WikiText-2; random weights give ~ the vocabulary size


def test_smollm2_piqa_is_above_chance(smollm2, one_thread):
    model, tok = smollm2
    res = run_tasks(model, tok, ["piqa"], limit=50)["piqa"]
    assert res["n"] == 50
    assert 0 <= res["acc"] <= 1 and 0 <= res["acc_norm"] <= 1
    # Chance is 0.5. SmolLM2-135M scored 0.70 on these 50 (0.66 on 100, 0.645 on 200); a broken
    # prompt or gold index gives about 0.5 (standard error 0.07 at n=50).
    assert res["acc"] >= 0.6


def test_tasks_run_on_a_model_carrying_a_dpq_quantization_config(smollm2, one_thread):
    """lm-eval's HFLM parses config.quantization_config with transformers, which knows no "dpq";
    a loaded dpq checkpoint carries one, so run_tasks hides it while wrapping and restores it."""
    model, tok = smollm2
    block = {"quant_method": "dpq", "method": "dpq-gar"}
    model.config.quantization_config = block
    try:
        res = run_tasks(model, tok, ["piqa"], limit=4)["piqa"]
        assert res["n"] == 4 and len(res["correct"]) == 4 and res["acc"] == sum(res["correct"]) / 4
        assert model.config.quantization_config is block
    finally:
        del model.config.quantization_config
