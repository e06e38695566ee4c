"""benchmarks/diagnose.py: the variant table and its argument checks (the model runs are benchmarks)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from dpq.eval import diagnose as LD

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnose.py"
spec = importlib.util.spec_from_file_location("diagnose", SCRIPT)
D = importlib.util.module_from_spec(spec)
spec.loader.exec_module(D)


def test_task_only_table_shows_the_change_against_float():
    rows = [
        {"variant": "float", "wikitext2_ppl": None, "windows": None, "tasks": {"lambada": {"acc": 0.44, "n": 200}}},
        {"variant": "w4a8", "wikitext2_ppl": None, "windows": None, "tasks": {"lambada": {"acc": 0.26, "n": 200}}},
    ]
    lines = D._table(rows, ["lambada"])
    assert lines[0] == "| variant | lambada acc % |"
    assert lines[2:] == ["| float | 44.0 |", "| w4a8 | 26.0 (-18.0) |"]


def test_perplexity_table_has_the_change_column():
    rows = [{"variant": "float", "wikitext2_ppl": 20.0, "windows": "4/10"},
            {"variant": "acts-only", "wikitext2_ppl": 20.5, "windows": "4/10"}]
    assert D._table(rows, [])[3] == "| acts-only | 20.500 (4/10) | +0.500 |"


def test_nothing_to_evaluate_and_unknown_variants_are_refused(capsys):
    with pytest.raises(SystemExit):
        D.main(["ckpt", "--ppl", "none"])
    assert "--ppl none needs --tasks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        D.main(["ckpt", "--variants", "nope"])
    assert "unknown variant(s) nope" in capsys.readouterr().err


@pytest.mark.parametrize("variant, message", [
    ("float-layers:x", "give a layer index N or a range N-M"),
    ("float-layers:5-2", "the range is empty"),
    ("float-kind:mlp", "unknown kind, use one of qkv, o, gate_up, down"),
    ("floaty", "unknown variant(s) floaty"),
])
def test_bad_variant_names_are_refused_with_the_fix(variant, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        D.check_variant(variant)


def test_shorthands_expand_and_layer_indices_are_checked_against_the_model():
    assert D.expand(["float", "each-layer", "each-kind"], 2) == [
        "float", "float-layers:0", "float-layers:1",
        "float-kind:qkv", "float-kind:o", "float-kind:gate_up", "float-kind:down"]
    with pytest.raises(ValueError, match="the model has 2 decoder layers"):
        D.expand(["float-layers:1-2"], 2)


def test_float_layers_and_float_kind_put_back_exactly_the_named_linears(tiny_llama_dir, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    import dpq
    from dpq.nn.linear import W4A8Linear

    float_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    quantized = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    calib = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    dpq.quantize(quantized, smollm2_tokenizer, dpq.QuantConfig.for_method("rtn-w4a8", group_size=32),
                 calib=calib, progress=False)

    def is_float(model, name):
        mod = model.get_submodule(name)
        return not isinstance(mod, W4A8Linear) and torch.equal(mod.weight, float_model.get_submodule(name).weight)

    names = [f"model.layers.{i}.{n}" for i in range(2) for n in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    m = D.build("float-layers:1", quantized, float_model)
    assert [is_float(m, n) for n in names] == [False] * 7 + [True] * 7
    m = D.build("float-kind:down", quantized, float_model)
    assert [is_float(m, n) for n in names] == [n.endswith("down_proj") for n in names]
    m = D.build(f"float:{names[0]}+{names[13]}", quantized, float_model)
    assert [is_float(m, n) for n in names] == [i in (0, 13) for i in range(14)]
    # the inputs are left untouched, and a restored model runs
    assert all(isinstance(quantized.get_submodule(n), W4A8Linear) for n in names)
    x = torch.randint(0, 1000, (1, 8))
    with torch.no_grad():
        full = D.build("float-layers:0-1", quantized, float_model)(x).logits
        assert torch.allclose(full, float_model(x).logits, atol=1e-5)


def test_task_perplexity_gets_its_own_column_with_the_change():
    rows = [
        {"variant": "float", "wikitext2_ppl": None, "windows": None,
         "tasks": {"lambada": {"acc": 0.44, "perplexity": 20.0, "n": 200}}},
        {"variant": "float-layers:3", "wikitext2_ppl": None, "windows": None,
         "tasks": {"lambada": {"acc": 0.30, "perplexity": 35.5, "n": 200}}},
    ]
    lines = D._table(rows, ["lambada"])
    assert lines[0] == "| variant | lambada acc % | lambada ppl |"
    assert lines[3] == "| float-layers:3 | 30.0 (-14.0) | 35.500 (+15.500) |"


def _vllm_pair():
    """(float model, its vllm-w4afp8 RTN quantized copy): tiny Llama with K, N multiples of 128."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    import dpq

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    float_model = LlamaForCausalLM(cfg).eval()
    quantized = copy.deepcopy(float_model)
    dpq.quantize(quantized, None, dpq.QuantConfig.for_method("rtn-w4a8", target="vllm-w4afp8"),
                 calib=torch.zeros(1, 8, dtype=torch.long), progress=False)
    return float_model, quantized


def test_weights_only_applies_s_w_once_for_vllm_checkpoints():
    """weights-only multiplies by the weight vLLM applies, chan * fp8((q - 8) * s8), not by it times s_w."""
    from dpq.numerics import vllm_w4afp8
    from dpq.numerics.int4 import unpack_int4

    float_model, quantized = _vllm_pair()
    lin = quantized.model.layers[0].mlp.down_proj
    assert lin.dynamic_act and float(lin.weight_scale) < 2 ** -6
    m = D.build("weights-only", quantized, float_model)
    swapped = m.model.layers[0].mlp.down_proj
    assert isinstance(swapped, LD._FloatActs)
    scales = lin.scales.float() * lin.weight_scale.float()
    want_w = vllm_w4afp8.effective_weight(unpack_int4(lin.weight, 256), scales, 128)
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert torch.allclose(swapped(x), x @ want_w.t(), rtol=1e-5, atol=1e-6)


def test_acts_only_quantizes_vllm_activations_per_token():
    """acts-only for a vllm-w4afp8 checkpoint (no static s_x) quantizes every Linear's input per token."""
    from dpq.numerics import vllm_w4afp8

    float_model, quantized = _vllm_pair()
    m = D.build("acts-only", quantized, float_model)
    swapped = [mod for mod in m.modules() if isinstance(mod, LD._FP8Acts)]
    assert len(swapped) == 14 and all(mod.s_x is None for mod in swapped)
    lin = swapped[0]
    x = torch.randn(2, 3, 128)
    x8, a = vllm_w4afp8.quantize_per_token(x.reshape(-1, 128))
    with torch.no_grad():
        assert torch.equal(lin(x), lin.lin((x8 * a.unsqueeze(1)).reshape(x.shape)))
