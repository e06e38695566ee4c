"""Every declared architecture quantizes end to end (tiny random models built from configs)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import dpq
from dpq.config import QuantConfig
from dpq.models.specs import SPECS, get_submodule, spec_for
from dpq.nn.linear import W4A8Linear

TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**TINY),
    "mistral": lambda: transformers.MistralConfig(**TINY),
    "qwen2": lambda: transformers.Qwen2Config(**TINY),
    "qwen3": lambda: transformers.Qwen3Config(head_dim=32, **TINY),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(head_dim=32, sliding_window=16, **TINY),
}


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_architecture_quantizes(model_type):
    torch.manual_seed(0)
    cfg = CONFIGS[model_type]()
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    spec = spec_for(cfg)
    calib = torch.randint(0, cfg.vocab_size, (4, 48))
    qcfg = QuantConfig.for_method("dpq-gar", group_size=64)
    with torch.no_grad():
        ref = model(calib[:1]).logits
    summary = dpq.quantize(model, None, qcfg, calib=calib, progress=False).summary
    layers = get_submodule(model, spec.layers)
    for layer in layers:
        for name in spec.linears:
            assert isinstance(get_submodule(layer, name), W4A8Linear), (model_type, name)
    assert len(summary.linears) == len(layers) * len(spec.linears)
    with torch.no_grad():
        out = model(calib[:1]).logits
    assert torch.isfinite(out).all()
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cos > 0.9, (model_type, float(cos))


def test_specs_name_distinct_model_types():
    seen = [t for s in SPECS for t in s.model_types]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_replayed_attention_is_bit_identical_to_recomputing(model_type):
    """The driver's attention replay is only a shortcut: same weights, scales and outputs."""
    from dpq.models.driver import quantize_model

    torch.manual_seed(0)
    cfg = CONFIGS[model_type]()
    base = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    calib = torch.randint(0, cfg.vocab_size, (6, 40))
    qcfg = QuantConfig.for_method("dpq-gar", group_size=64)
    spec = spec_for(cfg)
    models, calls = {}, {}
    for replay in (True, False):
        m = copy.deepcopy(base)
        attn = get_submodule(get_submodule(m, spec.layers)[0], spec.attention)
        calls[replay] = 0

        def count(*_, replay=replay):
            calls[replay] += 1

        attn.register_forward_pre_hook(count)
        quantize_model(m, calib, qcfg, batch_size=4, progress=False, replay_attention=replay)  # two batches
        models[replay] = m
    # passes over layer 0, two batches each: q/k/v, o, gate/up, down, output; replay skips the last three
    assert calls == {False: 2 * 5, True: 2 * 2}
    fast, slow = models[True].state_dict(), models[False].state_dict()
    assert fast.keys() == slow.keys()
    for k in fast:
        assert torch.equal(fast[k], slow[k]), (model_type, k)
    attn = get_submodule(get_submodule(models[True], spec.layers)[0], spec.attention)
    assert type(attn).__name__.endswith("Attention") and type(attn).__name__ != "_ReplayedAttention"


def _tiny_gemma3_multimodal():
    """A tiny random Gemma3ForConditionalGeneration (SigLIP vision tower + Gemma 3 text decoder)."""
    cfg = transformers.Gemma3Config(
        text_config=dict(head_dim=32, sliding_window=16, **TINY),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=509, eoi_token_index=510, image_token_index=511,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def test_gemma3_multimodal_text_decoder_quantizes(tmp_path):
    """The GEMMA3 spec (layers model.language_model.layers): every text-decoder Linear becomes W4A8,
    the vision tower and projector stay float, and the model round-trips through a checkpoint."""
    from dpq.models.specs import GEMMA3

    model = _tiny_gemma3_multimodal()
    assert type(model).__name__ == "Gemma3ForConditionalGeneration" and spec_for(model.config) is GEMMA3
    calib = torch.randint(0, 500, (4, 48))
    with torch.no_grad():
        ref = model(calib[:1]).logits
    vision = {n: p.clone() for n, p in model.model.vision_tower.named_parameters()}
    result = dpq.quantize(model, None, QuantConfig.for_method("dpq-gar", group_size=64), calib=calib,
                          progress=False)
    summary = result.summary
    layers = get_submodule(model, GEMMA3.layers)
    assert len(summary.linears) == len(layers) * len(GEMMA3.linears) == 14
    assert all(r.name.startswith("model.language_model.layers.") for r in summary.linears)
    for layer in layers:
        for name in GEMMA3.linears:
            assert isinstance(get_submodule(layer, name), W4A8Linear), name
    assert not any(isinstance(m, W4A8Linear) for m in model.model.vision_tower.modules())
    assert not any(isinstance(m, W4A8Linear) for m in model.model.multi_modal_projector.modules())
    assert all(torch.equal(p, vision[n]) for n, p in model.model.vision_tower.named_parameters())
    with torch.no_grad():
        out = model(calib[:1]).logits
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cos > 0.9, float(cos)
    loaded, _ = dpq.load(dpq.save(result, tmp_path / "ck"))
    with torch.no_grad():
        assert torch.equal(loaded(calib[:1]).logits, out)
