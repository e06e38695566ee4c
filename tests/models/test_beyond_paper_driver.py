"""The driver's side of the options beyond the paper, on tiny random models (seconds)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import dpq
from dpq.algorithms import hessian_from_inputs
from dpq.algorithms.refine import RefinableLinear
from dpq.config import QuantConfig
from dpq.models.set_inputs import SetInputs, token_weights
from dpq.models.smoothing import fold_scales, kv_tie
from dpq.models.specs import get_submodule, spec_for
from dpq.nn.linear import W4A8Linear
from dpq.numerics.fp8 import quantize_activation

TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024)
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(head_dim=32, sliding_window=16, **TINY),
}


def _model(model_type):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[model_type]()).eval()
    with torch.no_grad():  # norms away from their initial values, so the fold is really exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_folded_scales_leave_the_float_model_unchanged(model_type):
    model = _model(model_type)
    spec = spec_for(model.config)
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        ref = model(ids).logits
    sources = dict(spec.smooth_sources)
    gen = torch.Generator().manual_seed(0)
    for layer in model.model.layers:
        for names in spec.sequence:
            tie = kv_tie(model.config) if names[0] == spec.attention_output else None
            k = get_submodule(layer, names[0]).in_features
            s = torch.rand(k if tie is None else tie.kv * tie.d, generator=gen) * 4 + 0.25
            fold_scales(layer, spec, names, sources[names[0]], s if tie is None else tie.expand(s), tie)
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_deployed_hessian_and_token_clip():
    cfg = QuantConfig.for_method("dpq-gar", deployed_hessian=True)
    x = torch.randn(2, 50, 16)
    x[:, 0] *= 100  # massive first tokens
    stats = SetInputs(16, "t", "cpu", cfg)
    stats.add(x)
    s_x = float(x.abs().max()) / 448
    _, h, cross, _ = stats.finish(s_x)
    assert cross is None
    torch.testing.assert_close(h, hessian_from_inputs(quantize_activation(x, s_x, 448.0) * s_x))
    energy = torch.tensor([1.0, 1.0, 2.0, 100.0])
    torch.testing.assert_close(token_weights(energy, 10.0), torch.tensor([1.0, 1.0, 1.0, 0.1]))
    clipped = SetInputs(16, "t", "cpu", QuantConfig.for_method("dpq-gar", token_clip=4.0))
    clipped.add(x)
    _, _, _, share = clipped.finish(s_x)
    plain = SetInputs(16, "t", "cpu", QuantConfig.for_method("dpq-gar"))
    plain.add(x)
    assert share < plain.finish(s_x)[3]


@pytest.mark.parametrize("options", [
    {"group_search": True}, {"deployed_hessian": True, "asym_alpha": 0.5}, {"smooth": True}, {"token_clip": 10.0},
    {"refine_steps": 4},
])
def test_each_option_quantizes_end_to_end(options):
    model = _model("llama")
    calib = torch.randint(0, 512, (4, 64))
    ids = torch.randint(0, 512, (1, 32))
    with torch.no_grad():
        ref = model(ids).logits
    summary = dpq.quantize(model, None, QuantConfig.for_method("dpq-gar", group_size=64, **options),
                           calib=calib, progress=False).summary
    assert len(summary.linears) == 14 and all(isinstance(m, W4A8Linear) for n, m in model.named_modules()
                                              if n.endswith("proj"))
    with torch.no_grad():
        out = model(ids).logits
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.9
    if options.get("smooth"):
        assert len(summary.smoothing) == 8
    if options.get("refine_steps"):
        assert set(summary.refine) == {"model.layers.0", "model.layers.1"}
        for r in summary.refine.values():
            assert r["kept"] == (r["loss_after"] < r["loss_before"])


def test_refinable_linear_starts_at_the_solver_result():
    model = _model("llama")
    dpq.quantize(model, None, QuantConfig.for_method("dpq-gar", group_size=64), calib=torch.randint(0, 512, (2, 64)),
                 progress=False)
    q = model.model.layers[0].mlp.down_proj
    before = {k: v.clone() for k, v in q.state_dict().items()}
    r = RefinableLinear(q)
    x = torch.randn(3, 7, q.in_features)
    with torch.no_grad():
        torch.testing.assert_close(r(x), q(x), rtol=1e-5, atol=1e-5)
    r.write_back()
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_holdout_calibration_stays_in_the_first_part(tmp_path, smollm2_tokenizer):
    from dpq.io.data import HOLDOUT_FRACTION, calibration_batches

    text = " ".join(f"word{i}" for i in range(3000))
    path = tmp_path / "c.txt"
    path.write_text(text)
    ids = smollm2_tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    cut = int(ids.numel() * (1 - HOLDOUT_FRACTION))
    batch = calibration_batches(smollm2_tokenizer, str(path), 64, 32, seed=0, holdout=True)
    head = ids[:cut].tolist()
    for row in batch.tolist():
        assert any(head[i : i + 32] == row for i in range(cut - 31)), "a window outside the first part"
    starts_all = calibration_batches(smollm2_tokenizer, str(path), 64, 32, seed=0)
    assert not torch.equal(starts_all, batch)  # without holdout the windows come from the whole text


def test_smoothing_search_tames_a_massive_channel():
    from dpq.models.smoothing import search_scales

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 64, generator=g) * 0.05
    x[:, 5] *= 0.1
    x[::500, 5] = 3000.0  # a few massive-activation tokens in one channel
    w = torch.randn(32, 64, generator=g) * 0.05
    w[:, 5] *= 0.2  # room in the weight column: scaling it up keeps its INT4 groups' ranges
    amax = x.abs().amax(dim=0)
    cfg = QuantConfig.for_method("dpq-gar", group_size=32)
    perm = torch.randperm(2000, generator=g)
    s, errors = search_scales([w], x[perm], amax, cfg)
    best = min(errors, key=errors.get)
    assert best.startswith("outlier") and errors[best] < 0.8 * errors["none"], errors
    assert s[5] > 4 and (s[torch.arange(64) != 5] == 1).all()  # only the massive channel is scaled
