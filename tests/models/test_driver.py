"""The calibration pipeline on a tiny random Llama (seconds) and on SmolLM2 (slow)."""

from __future__ import annotations

import copy

import pytest
import torch

import dpq
from dpq.config import CalibSpec, QuantConfig
from dpq.models.loading import load_float_model
from dpq.models.specs import UnsupportedArchitecture, spec_for
from dpq.nn.linear import W4A8Linear

CALIB = CalibSpec(samples=4, seq_len=64)


def _quantize(path, method="dpq-gar", **kw):
    model, tok, _ = load_float_model(str(path))
    kw.setdefault("calib", CALIB)
    cfg = QuantConfig.for_method(method, group_size=64, **kw)
    summary = dpq.quantize(model, tok, cfg, progress=False).summary
    return model, tok, cfg, summary


@pytest.mark.parametrize("method", ["dpq-gar", "dpq", "naive-w4a8", "rtn-w4a8", "gptq-w4a16", "rtn-w4a16"])
def test_every_decoder_linear_is_quantized(tiny_llama_dir, method):
    model, tok, cfg, summary = _quantize(tiny_llama_dir, method)
    quantized = [n for n, m in model.named_modules() if isinstance(m, W4A8Linear)]
    assert len(quantized) == 2 * 7 == len(summary.linears)
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, W4A8Linear)
    for r in summary.linears:
        assert 0 <= r.rel_error < 0.5, r
        assert (r.input_scale is not None) == cfg.activations_fp8
        # 4 x 64 tokens: the top 0.1% is one token, whose share of tr(H) is in [1/256, 1].
        assert (r.top_token_share is None) == summary.data_free
        assert summary.data_free or 1 / 256 <= r.top_token_share <= 1, r
    ids = tok("Hello world, this is a test", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_quantized_outputs_are_close_to_float(tiny_llama_dir):
    ref, tok, _ = load_float_model(str(tiny_llama_dir))
    model, _, _, _ = _quantize(tiny_llama_dir, "dpq-gar")
    ids = tok("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = ref(ids).logits, model(ids).logits
    # A random 2-layer model quantized to 4 bits: logits move, but stay correlated.
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert cos > 0.9


def test_deterministic_for_a_seed(tiny_llama_dir):
    m1, *_ = _quantize(tiny_llama_dir, "dpq-gar")
    m2, *_ = _quantize(tiny_llama_dir, "dpq-gar")
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n


def test_ignore_keeps_modules_in_float(tiny_llama_dir):
    model, _, _, summary = _quantize(tiny_llama_dir, "rtn-w4a8", ignore=("down_proj", "model.layers.1.self_attn.*"))
    assert not isinstance(model.model.layers[0].mlp.down_proj, W4A8Linear)
    assert not isinstance(model.model.layers[1].self_attn.q_proj, W4A8Linear)
    assert isinstance(model.model.layers[0].self_attn.q_proj, W4A8Linear)
    assert len(summary.skipped) == 2 + 4


def test_unknown_architecture_lists_supported():
    class Cfg:
        model_type = "gpt2"

    with pytest.raises(UnsupportedArchitecture, match=r"Supported: Llama.*specs.py"):
        spec_for(Cfg())


def test_bad_calibration_inputs(tiny_llama_dir):
    model, tok, _ = load_float_model(str(tiny_llama_dir))
    cfg = QuantConfig.for_method("rtn-w4a8", group_size=64)
    with pytest.raises(ValueError, match="non-empty"):
        dpq.quantize(model, tok, cfg, calib=torch.zeros(0, 8, dtype=torch.long), progress=False)
    with pytest.raises(FileNotFoundError, match="calibration source"):
        dpq.quantize(model, tok, QuantConfig.for_method("rtn-w4a8", calib=CalibSpec(source="/nope.txt", seq_len=64)), progress=False)


def test_group_size_larger_than_k_is_refused(tiny_llama_dir):
    model, tok, _ = load_float_model(str(tiny_llama_dir))
    cfg = QuantConfig.for_method("dpq", group_size=256, calib=CALIB)
    with pytest.raises(ValueError, match="group_size=256"):
        dpq.quantize(model, tok, cfg, progress=False)


def test_rtn_w4a16_needs_no_calibration_pass(tiny_llama_dir):
    from dpq.algorithms import rtn_solve
    from dpq.models.driver import quantize_model

    model, _, _ = load_float_model(str(tiny_llama_dir))
    ref = copy.deepcopy(model)
    cfg = QuantConfig.for_method("rtn-w4a16", group_size=64, calib=CALIB)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    sa = quantize_model(a, torch.zeros(1, 8, dtype=torch.long), cfg, progress=False)
    sb = quantize_model(b, torch.randint(0, 100, (3, 16)), cfg, progress=False)
    assert sa.data_free and sb.data_free and len(sa.linears) == 2 * 7
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n  # the calibration tokens play no part
    w = ref.model.layers[1].mlp.down_proj.weight.detach().float()
    lin = a.model.layers[1].mlp.down_proj
    assert isinstance(lin, W4A8Linear) and not lin.is_w4a8
    x = torch.randn(3, w.shape[1])
    with torch.no_grad():
        y, ref = lin(x), x @ rtn_solve(w, cfg).weight().float().t()
    assert torch.linalg.norm(y - ref) / torch.linalg.norm(ref) < 1e-2  # the module stores BF16 group scales
    err = sa.linears[-1].rel_error
    assert 0 < err < 0.2  # ||W - W_q|| / ||W|| of a 4-bit RTN weight


def test_skip_first_leaves_leading_tokens_out_of_the_hessians(tiny_llama_dir, monkeypatch):
    from dpq.algorithms.hessian import HessianAccumulator

    seen: list[tuple[int, ...]] = []
    real_add = HessianAccumulator.add

    def add(self, x):
        seen.append(tuple(x.shape))
        real_add(self, x)

    monkeypatch.setattr(HessianAccumulator, "add", add)
    skipped = CalibSpec(samples=4, seq_len=64, skip_first=3)
    m_skip, _, _, s_skip = _quantize(tiny_llama_dir, "dpq-gar", calib=skipped)
    assert seen and all(shape[1] == 64 - 3 for shape in seen), seen  # [batch, tokens, K]
    seen.clear()
    m_all, _, _, s_all = _quantize(tiny_llama_dir, "dpq-gar")
    assert seen and all(shape[1] == 64 for shape in seen)
    # Layer 0's q/k/v see the float inputs in both runs: the observers see every token, so the
    # same activation scale; the Hessians do not, so other weights.
    assert s_skip.linears[0].input_scale == s_all.linears[0].input_scale
    a = m_skip.model.layers[0].mlp.down_proj.weight
    b = m_all.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(a, b)


def test_skip_first_must_leave_tokens(tiny_llama_dir):
    from dpq.config import ConfigError
    from dpq.models.driver import quantize_model

    with pytest.raises(ConfigError, match="skip_first=64.*below seq_len=64"):
        CalibSpec(samples=4, seq_len=64, skip_first=64)
    with pytest.raises(ConfigError, match="skip_first=-1"):
        CalibSpec(skip_first=-1)
    model, _, _ = load_float_model(str(tiny_llama_dir))
    cfg = QuantConfig.for_method("dpq", group_size=64, calib=CalibSpec(samples=4, seq_len=64, skip_first=8))
    with pytest.raises(ValueError, match="skip_first=8 leaves none of the 8 tokens"):
        quantize_model(model, torch.randint(0, 100, (2, 8)), cfg, progress=False)
