"""Solver invariants on real SmolLM2-135M layers fed with WikiText-2 validation text (slow)."""

import statistics

import pytest
import torch

from dpq.algorithms import HessianAccumulator, relative_output_error, solve
from dpq.config import QuantConfig
from dpq.io.data import calibration_batches
from dpq.models.linear_inputs import flat_float, watch_model_linears
from dpq.models.specs import get_submodule, spec_for

LAYERS = (0, 15)


@pytest.fixture(scope="module")
def real_layers(smollm2):
    """{name: (W [N, K], H [K, K], X [T, K], s_x)} for every Linear of decoder layers 0 and 15."""
    model, tok = smollm2
    ids = calibration_batches(tok, "wikitext2", samples=8, seq_len=256, seed=0)
    acc, xs = {}, {}
    blocks = model.model.layers
    for li in LAYERS:
        for name in spec_for(model.config).linears:
            mod = get_submodule(blocks[li], name)
            acc[f"layers.{li}.{name}"] = (HessianAccumulator(mod.in_features, f"layers.{li}.{name}"), mod)
            xs[f"layers.{li}.{name}"] = []

    def on_input(li, name, x):
        x = flat_float(x)
        acc[f"layers.{li}.{name}"][0].add(x)
        xs[f"layers.{li}.{name}"].append(x)

    with watch_model_linears(model, on_input, layers=LAYERS), torch.no_grad():
        for i in range(0, ids.shape[0], 4):
            model(input_ids=ids[i : i + 4])
    out = {}
    for key, (a, mod) in acc.items():
        x = torch.cat(xs[key])
        out[key] = (mod.weight.detach().float().clone(), a.hessian(), x, x.abs().max().item() / 448)
    return out


@pytest.mark.slow
def test_gptq_beats_rtn_on_every_real_layer(real_layers):
    for key, (w, h, _, _) in real_layers.items():
        rtn = relative_output_error(w, solve(w, h, QuantConfig.for_method("rtn-w4a16")), h)
        gptq = relative_output_error(w, solve(w, h, QuantConfig.for_method("gptq-w4a16"), name=key), h)
        assert gptq < rtn, key


@pytest.mark.slow
def test_dpq_beats_naive_w4a8_on_real_layers(real_layers):
    """Under real W4A8 numerics (FP8 weights and static max-abs FP8 activations)."""
    naive, dpq = [], []
    for key, (w, h, x, s_x) in real_layers.items():
        naive.append(relative_output_error(w, solve(w, h, QuantConfig.for_method("naive-w4a8")), x, act_scale=s_x))
        dpq.append(relative_output_error(w, solve(w, h, QuantConfig.for_method("dpq"), name=key), x, act_scale=s_x))
    assert statistics.mean(dpq) < statistics.mean(naive)
    assert sum(d < n for d, n in zip(dpq, naive)) >= 0.7 * len(dpq)
