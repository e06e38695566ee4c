"""Every declared architecture quantizes end to end (tiny random models built from configs)."""

from __future__ import annotations

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
    summary = dpq.quantize(model, None, qcfg, calib=calib, progress=False)
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
