"""compressed-tensors export: layout, loading with transformers, agreement with dpq, refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import dpq
from dpq.io.export import ExportError, check_exportable
from dpq.numerics import vllm_w4afp8
from dpq.numerics.fp8 import fp8_cast
from dpq.numerics.int4 import dequantize, pack_int4_int32, unpack_int4

pytest.importorskip("compressed_tensors")


# --- helpers -------------------------------------------------------------------

def _tiny_llama(tok, hidden: int, inter: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


def _quantized_dir(tmp_path, tok, model, method, target="paper", group_size=32, symmetric=False, name="ck"):
    cfg = dpq.QuantConfig.for_method(method, group_size=group_size, symmetric=symmetric, target=target)
    calib = torch.randint(0, len(tok), (2, 32), generator=torch.Generator().manual_seed(0))
    return dpq.save(dpq.quantize(model, tok, cfg, calib=calib, progress=False), tmp_path / name)


@pytest.fixture(scope="module")
def paper_dirs(tmp_path_factory, tiny_llama_dir, smollm2_tokenizer):
    """Tiny Llama (K = 96, 160) quantized with RTN W4A8 g32, symmetric and asymmetric, and their exports."""
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("export-paper")
    out = {}
    for sym in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
        ck = _quantized_dir(tmp, smollm2_tokenizer, model, "rtn-w4a8", symmetric=sym, name=f"ck-{sym}")
        out[sym] = (ck, dpq.export(ck, tmp / f"ct-{sym}", weights="int4"))
    return out


@pytest.fixture(scope="module")
def vllm_dirs(tmp_path_factory, smollm2_tokenizer):
    """Tiny Llama with K, N multiples of 128 quantized by DPQ for vLLM's W4AFP8 numerics, and its export."""
    tmp = tmp_path_factory.mktemp("export-vllm")
    model = _tiny_llama(smollm2_tokenizer, 256, 512)
    ck = _quantized_dir(tmp, smollm2_tokenizer, model, "dpq", target="vllm-w4afp8", group_size=128, symmetric=True)
    return ck, dpq.export(ck, tmp / "ct")


def _ids(tok, n=40):
    return tok("The capital of France is Paris. Robert Boulter is an English actor. " * 4,
               return_tensors="pt").input_ids[:, :n]


# --- layout --------------------------------------------------------------------

def test_packing_matches_compressed_tensors():
    """dpq's unsigned codes (0..15) are compressed-tensors' stored nibbles (signed code + 8)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (24, 200), generator=g, dtype=torch.uint8)  # K not a multiple of 8
    ours = pack_int4_int32(codes)
    theirs = pack_to_int32((codes.to(torch.int16) - 8).to(torch.int8), 4)
    assert torch.equal(ours, theirs)
    assert torch.equal(unpack_from_int32(ours, 4, torch.Size([24, 200])).to(torch.int16) + 8, codes.to(torch.int16))
    zeros = torch.randint(0, 16, (20, 3), generator=g, dtype=torch.uint8)  # N = 20: packed along N
    packed_z = pack_int4_int32(zeros.t()).t().contiguous()
    assert torch.equal(packed_z, pack_to_int32((zeros.to(torch.int16) - 8).to(torch.int8), 4, packed_dim=0))


def test_export_files_and_config(paper_dirs):
    from safetensors import safe_open

    ck, out = paper_dirs[False]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "dpq_export.json", "tokenizer.json", "generation_config.json"} <= names
    assert "dpq_manifest.json" not in names
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
    grp = q["config_groups"]["group_0"]
    assert grp["weights"] == {**grp["weights"], "num_bits": 4, "type": "int", "symmetric": False,
                              "strategy": "group", "group_size": 32}
    assert grp["input_activations"]["type"] == "float" and grp["input_activations"]["strategy"] == "tensor"
    assert grp["input_activations"]["dynamic"] is False
    assert grp["weights"]["zp_dtype"] == "int32"
    assert q["ignore"] == ["lm_head"]
    src = dpq.io.checkpoint.read_tensors(ck)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        name = "model.layers.0.mlp.up_proj"  # N = 160, K = 96, G = 3
        assert f.get_tensor(f"{name}.weight_packed").shape == (160, 12)
        assert f.get_tensor(f"{name}.weight_packed").dtype == torch.int32
        zp = f.get_tensor(f"{name}.weight_zero_point")  # [N, G] int32: packed along N, then zero rows
        assert zp.shape == (160, 3) and zp.dtype == torch.int32
        assert torch.equal(zp[:20], pack_int4_int32(src[f"{name}.zeros"].t()).t()) and not zp[20:].any()
        assert f.get_tensor(f"{name}.weight_shape").tolist() == [160, 96]
        s_w = float(src[f"{name}.weight_scale"])
        assert torch.equal(f.get_tensor(f"{name}.weight_scale").float(), src[f"{name}.scales"].float() * s_w)
        assert float(f.get_tensor(f"{name}.input_scale")) == float(src[f"{name}.input_scale"])
    info = json.loads((out / "dpq_export.json").read_text())
    assert "vllm_vs_dpq" not in json.dumps(info)  # nothing dpq did not measure
    assert 0 < info["weight_difference"]["transformers_vs_dpq"]["max"] < 0.05  # the FP8 weight rounding


# --- loading with transformers and agreement ----------------------------------------

def test_paper_symmetric_loads_and_emulates_static_fp8(paper_dirs, smollm2_tokenizer):
    """transformers (CPU) runs the export: FP8 static activations fake-quantized (x/s -> fp8 -> *s),
    weight (q - z) * scale without FP8 rounding. One layer is checked against that emulation exactly."""
    from transformers import AutoModelForCausalLM

    ck, out = paper_dirs[True]
    ct = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref, _ = dpq.load(ck, dtype=torch.float32)
    ids = _ids(smollm2_tokenizer)
    with torch.no_grad():
        a, b = ct(ids).logits, ref(ids).logits.float()
    # layer check: same input, CT's Linear vs the emulation of what compressed-tensors computes
    src = dpq.io.checkpoint.read_tensors(ck)
    name = "model.layers.0.self_attn.q_proj"
    lin = ct.get_submodule(name)
    x = torch.randn(5, 96)
    with torch.no_grad():
        y = lin(x)
    s_x = float(src[f"{name}.input_scale"])
    w = dequantize(unpack_int4(src[f"{name}.weight"], 96), src[f"{name}.scales"].float(),
                   src[f"{name}.zeros"].float(), 32) * float(src[f"{name}.weight_scale"])
    emu = (fp8_cast(x / s_x) * s_x) @ w.t()
    assert torch.allclose(y, emu, rtol=1e-5, atol=1e-6)  # fp32 both sides: summation order only
    # whole model: differs from dpq by the FP8 weight rounding (< 5% of the weight, see dpq_export.json)
    # and dpq's BF16 Linear outputs; on this random 2-layer model that stays under 10% of the logits
    rel = float((a - b).norm() / b.norm())
    assert rel < 0.10, rel
    assert float((a.argmax(-1) == b.argmax(-1)).float().mean()) > 0.5


def test_paper_asymmetric_dequantized_weights_exact(paper_dirs):
    """Asymmetric exports hold the packed zero points compressed-tensors' compressor writes; transformers'
    dequantize path rebuilds exactly (q - z) * s_g * s_w."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    ck, out = paper_dirs[False]
    ct = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                              quantization_config=CompressedTensorsConfig(dequantize=True))
    src = dpq.io.checkpoint.read_tensors(ck)
    for name, k in (("model.layers.1.mlp.down_proj", 160), ("model.layers.0.self_attn.k_proj", 96)):
        w = dequantize(unpack_int4(src[f"{name}.weight"], k), src[f"{name}.scales"].float(),
                       src[f"{name}.zeros"].float(), 32) * float(src[f"{name}.weight_scale"])
        assert torch.equal(ct.get_submodule(name).weight.detach(), w)


def test_paper_asymmetric_default_load_runs_fp8_activations(paper_dirs, smollm2_tokenizer):
    """Plain from_pretrained (no arguments) loads the asymmetric export; after the first forward each Linear
    holds exactly (q - z) * s_g * s_w and fake-quantizes its input to FP8 with the static s_x."""
    from transformers import AutoModelForCausalLM

    ck, out = paper_dirs[False]
    ct = AutoModelForCausalLM.from_pretrained(out).eval()
    ref, _ = dpq.load(ck, dtype=torch.float32)
    ids = _ids(smollm2_tokenizer)
    with torch.no_grad():
        a, b = ct(ids).logits, ref(ids).logits.float()  # the first forward decompresses the weights
    src = dpq.io.checkpoint.read_tensors(ck)
    for name, k in (("model.layers.1.mlp.down_proj", 160), ("model.layers.0.self_attn.k_proj", 96)):
        w = dequantize(unpack_int4(src[f"{name}.weight"], k), src[f"{name}.scales"].float(),
                       src[f"{name}.zeros"].float(), 32) * float(src[f"{name}.weight_scale"])
        lin = ct.get_submodule(name)
        assert torch.equal(lin.weight.detach(), w)
        x = torch.randn(5, k)
        s_x = float(src[f"{name}.input_scale"])
        with torch.no_grad():
            assert torch.allclose(lin(x), (fp8_cast(x / s_x) * s_x) @ w.t(), rtol=1e-5, atol=1e-6)
    rel = float((a - b).norm() / b.norm())
    assert rel < 0.10, rel  # FP8 weight rounding and dpq's BF16 outputs, as for the symmetric export


def test_upstream_packed_zero_points_still_fail_to_load(paper_dirs, tmp_path):
    """The defect the padded layout works around (transformers 5.24, compressed-tensors 0.20.1): the standard
    packed [ceil(N/8), G] weight_zero_point mismatches the [N, G] layout transformers builds on the meta device.
    When this test fails, upstream has fixed it: export the standard layout again (dpq.io.export docstring)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "std"
    shutil.copytree(paper_dirs[False][1], out)
    t = load_file(out / "model.safetensors")
    for key in [k for k in t if k.endswith("weight_zero_point")]:
        n = int(t[key.replace("weight_zero_point", "weight_shape")][0])
        t[key] = t[key][: (n + 7) // 8].contiguous()
    save_file(t, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    del cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["zp_dtype"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(out)


def test_fp8_weights_export_runs_dpq_numerics(paper_dirs, tmp_path, smollm2_tokenizer):
    """--weights fp8: plain from_pretrained holds dpq's inference weight s_w * fp8((q - z) * s_g) exactly, and
    each Linear's output rounded to BF16 is dpq's (up to the summation order)."""
    from transformers import AutoModelForCausalLM

    ck = paper_dirs[False][0]
    out = dpq.export(ck, tmp_path / "fp8", weights="fp8")
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["format"] == "float-quantized"
    assert q["config_groups"]["group_0"]["weights"]["type"] == "float"
    assert json.loads((out / "dpq_export.json").read_text())["weight_difference"]["transformers_vs_dpq"]["max"] == 0
    ct = AutoModelForCausalLM.from_pretrained(out).eval()
    ref, _ = dpq.load(ck)
    with torch.no_grad():
        ct(_ids(smollm2_tokenizer, 8))  # decompress
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
            a, b = ct.get_submodule(name), ref.get_submodule(name)
            assert torch.equal(a.weight, b.dequantized_weight().float() * b.weight_scale.float())
            x = torch.randn(6, b.in_features)
            assert torch.allclose(a(x).bfloat16().float(), b(x).float(), rtol=2**-7, atol=1e-5)


def test_default_weights_fp8_for_paper_int4_for_vllm(paper_dirs, vllm_dirs, tmp_path):
    """The paper target's default export is dpq's exact FP8 weights; vLLM's W4AFP8 form stays INT4."""
    out = dpq.export(paper_dirs[False][0], tmp_path / "default")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == "float-quantized"
    assert json.loads((out / "dpq_export.json").read_text())["weights"] == "fp8"
    vllm = json.loads((vllm_dirs[1] / "config.json").read_text())["quantization_config"]
    assert vllm["format"] == "pack-quantized"


def test_fp8_weights_refusals(paper_dirs, vllm_dirs, tmp_path):
    with pytest.raises(ExportError, match="export this checkpoint with --weights int4"):
        dpq.export(vllm_dirs[0], tmp_path / "a", weights="fp8")
    with pytest.raises(ExportError, match="no FP8 numerics"):
        check_exportable(_config(method="rtn-w4a16"), {"a": [256, 256]}, "paper", "fp8")
    with pytest.raises(ExportError, match="weights 'fp4'"):
        dpq.export(paper_dirs[True][0], tmp_path / "b", weights="fp4")
    check_exportable(_config(group_size=128), {"a": [576, 576]}, "paper", "fp8")  # any K: one scale per tensor


def test_vllm_target_export_and_numerics(vllm_dirs, smollm2_tokenizer):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    ck, out = vllm_dirs
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    grp = q["config_groups"]["group_0"]
    assert grp["weights"]["symmetric"] is True and grp["weights"]["group_size"] == 128
    assert grp["input_activations"] == {**grp["input_activations"], "type": "float", "num_bits": 8,
                                        "strategy": "token", "dynamic": True, "symmetric": True}
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert not any(k.endswith(("input_scale", "weight_zero_point")) for k in keys)
    # dpq's reference model runs vLLM's numerics: per-token activations, chan * fp8((q - 8) * s8)
    ref, _ = dpq.load(ck, dtype=torch.float32)
    lin = ref.model.layers[0].mlp.down_proj
    assert lin.dynamic_act and lin.input_scale is None
    x = torch.randn(3, 512)
    src = dpq.io.checkpoint.read_tensors(ck)
    name = "model.layers.0.mlp.down_proj"
    scales = src[f"{name}.scales"].float() * float(src[f"{name}.weight_scale"])
    want = vllm_w4afp8.linear(x, unpack_int4(src[f"{name}.weight"], 512), scales)
    with torch.no_grad():
        assert torch.allclose(lin(x).float(), want.float(), rtol=2**-7, atol=1e-4)
    # transformers runs per-token fake-quant activations and (q - 8) * scale weights (no FP8 scale re-quant)
    ct = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = _ids(smollm2_tokenizer)
    with torch.no_grad():
        a, b = ct(ids).logits, ref(ids).logits.float()
    rel = float((a - b).norm() / b.norm())
    assert rel < 0.15, rel  # FP8 re-quantization of weights (~3% of the weight on random layers) compounds
    info = json.loads((out / "dpq_export.json").read_text())
    assert set(info["weight_difference"]) == {"transformers_vs_dpq"}  # nothing claimed about vLLM unmeasured


def test_dpq_for_vllm_beats_plain_gptq_under_vllm_numerics():
    """The solver's vLLM branch: under vLLM's weight numerics its output error is below plain GPTQ's."""
    from dpq.algorithms import solve
    from dpq.numerics.qweight import QuantizedWeight

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 256, generator=g) @ (torch.randn(256, 256, generator=g) * 0.2 + torch.eye(256))
    w = torch.randn(128, 256, generator=g) * 0.05
    h = 2 * x.t() @ x / x.shape[0]

    def err(qw: QuantizedWeight) -> float:
        wq = vllm_w4afp8.effective_weight(qw.codes, qw.scale * qw.s_w, 128)
        return float(((x @ (w - wq).t()) ** 2).sum() / ((x @ w.t()) ** 2).sum())

    base = dict(group_size=128, symmetric=True, target="vllm-w4afp8")
    e_dpq = err(solve(w, h, dpq.QuantConfig.for_method("dpq", **base)))
    e_naive = err(solve(w, h, dpq.QuantConfig.for_method("naive-w4a8", group_params="frozen", **base)))
    e_rtn = err(solve(w, h, dpq.QuantConfig.for_method("rtn-w4a8", **base)))
    assert e_dpq < e_naive < e_rtn, (e_dpq, e_naive, e_rtn)


# --- refusals and atomicity ------------------------------------------------------

def _config(**kw):
    target = kw.pop("target", "paper")
    return dpq.QuantConfig.for_method(kw.pop("method", "dpq"), target=target, **kw)


@pytest.mark.parametrize("cfg,modules,target,match", [
    (_config(), {"a": [256, 256]}, "vllm-w4afp8", "re-quantize with --target vllm-w4afp8"),
    (_config(target="vllm-w4afp8", symmetric=True), {"a": [576, 1536]}, "vllm-w4afp8", "multiple of 128"),
    (_config(target="vllm-w4afp8", symmetric=True), {"a": [256, 256]}, "paper", "export it with --target vllm"),
    (_config(group_size=128), {"a": [576, 576]}, "paper", "K divisible by the group size 128"),
    (_config(fp8_max=240.0), {"a": [256, 256]}, "paper", "F=240"),
    (_config(), {"a": [256, 256]}, "other", "target 'other'"),
])
def test_refusals(cfg, modules, target, match):
    with pytest.raises(ExportError, match=match):
        check_exportable(cfg, modules, target)


@pytest.mark.parametrize("f", [240.0, 224.0])
def test_other_fp8_range_is_named_without_calling_it_gaudi_2(f):
    """Issue 24, case 10: F is any E4M3 value; export names it and says what compressed-tensors needs."""
    with pytest.raises(ExportError) as e:
        check_exportable(_config(fp8_max=f), {"a": [256, 256]}, "paper")
    assert f"F={f:g};" in str(e.value) and "Gaudi" not in str(e.value) and "--fp8-max 448" in str(e.value)


def test_accepts_expressible():
    check_exportable(_config(group_size=-1), {"a": [576, 577]}, "paper")  # per-channel: any K
    check_exportable(_config(target="vllm-w4afp8", symmetric=True), {"a": [1536, 256]}, "vllm-w4afp8")
    check_exportable(_config(method="rtn-w4a16", group_size=64), {"a": [576, 576]}, "paper")


def test_bad_inputs(paper_dirs, tmp_path, tiny_llama_dir):
    ck, out = paper_dirs[True]
    with pytest.raises(ExportError, match="already exists"):
        dpq.export(ck, out)
    with pytest.raises(ExportError, match="format 'gguf'"):
        dpq.export(ck, tmp_path / "x", format="gguf")
    with pytest.raises(ExportError, match="is the source checkpoint"):
        dpq.export(ck, ck, overwrite=True)
    with pytest.raises(ValueError, match="not a dpq checkpoint"):
        dpq.export(tiny_llama_dir, tmp_path / "y")
    with pytest.raises(ExportError, match="re-quantize with --target vllm-w4afp8"):
        dpq.export(ck, tmp_path / "z", target="vllm-w4afp8")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_corrupted_source_refused(paper_dirs, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(paper_dirs[True][0], ck)
    with open(ck / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match="sha256"):
        dpq.export(ck, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_nothing(paper_dirs, tmp_path, monkeypatch):
    import dpq.io.export as ex

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ex, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        dpq.export(paper_dirs[True][0], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(paper_dirs, tmp_path, capsys):
    from dpq.cli import main

    ck, _ = paper_dirs[True]
    assert main(["export", str(ck), "--format", "compressed-tensors", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "model.safetensors").is_file()
    assert "weights: FP8 (1 byte per weight" in capsys.readouterr().out  # the default says what it costs
    assert main(["export", str(ck), "--out", str(tmp_path / "o3"), "--weights", "int4"]) == 0
    assert "weights: FP8" not in capsys.readouterr().out
    assert main(["export", str(ck), "--out", str(tmp_path / "o2"), "--target", "vllm-w4afp8"]) == 2
    assert "re-quantize with --target vllm-w4afp8" in capsys.readouterr().err


# --- real model (slow) -------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_paper_export_perplexity(smollm2, tmp_path):
    """SmolLM2 (K = 576, 1536: group 64), DPQ symmetric paper target, 2 x 64 calibration tokens: WikiText-2
    perplexity of both transformers-loaded exports near dpq's reference model: INT4 weights within 1% (as
    before FP8 weights existed), FP8 weights within 3%.

    Each exported Linear matches dpq's to BF16 output rounding (about 0.2%, tested exactly elsewhere), but
    with FP8 activations a tiny difference flips input roundings downstream: on these 2 x 256 tokens two
    correct implementations differ by up to about 2.5% in perplexity (measured: FP8 -2.2%, INT4 -0.4%).
    The 1% target is measured on 2 x 2048 tokens by benchmarks/export_loads_by_default.py."""
    import copy

    from transformers import AutoModelForCausalLM

    from dpq.eval.perplexity import wikitext2_perplexity

    model, tok = smollm2
    model = copy.deepcopy(model)
    cfg = dpq.QuantConfig.for_method("dpq", group_size=64, symmetric=True, calib=dpq.CalibSpec(samples=2, seq_len=64))
    ck = dpq.save(dpq.quantize(model, tok, cfg, progress=False), tmp_path / "ck")
    ref, _ = dpq.load(ck, dtype=torch.float32)
    p_ref = wikitext2_perplexity(ref, tok, seq_len=256, max_windows=2, progress=False).ppl
    for weights, bound in (("int4", 0.01), ("fp8", 0.03)):  # int4: the bound this test always had
        out = dpq.export(ck, tmp_path / f"ct-{weights}", weights=weights)
        ct = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        p_ct = wikitext2_perplexity(ct, tok, seq_len=256, max_windows=2, progress=False).ppl
        assert abs(p_ct / p_ref - 1) < bound, (weights, p_ct, p_ref)


def test_ignored_linears_stay_dense(tmp_path, tiny_llama_dir, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    dense = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    cfg = dpq.QuantConfig.for_method("rtn-w4a8", group_size=32, symmetric=True, ignore=("model.layers.1.mlp.down_proj",))
    result = dpq.quantize(model, smollm2_tokenizer, cfg, calib=torch.randint(0, 1000, (1, 16)), progress=False)
    out = dpq.export(dpq.save(result, tmp_path / "ck"), tmp_path / "ct")
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["ignore"] == ["lm_head", "model.layers.1.mlp.down_proj"]
    ct = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        ct(_ids(smollm2_tokenizer, 8))
    assert torch.equal(ct.model.layers[1].mlp.down_proj.weight.detach(), dense)


def test_cli_quantize_target_checks(tmp_path, capsys):
    from dpq.cli import build_parser, main

    assert build_parser().parse_args(["quantize", "--out", "x"]).target == "paper"
    assert main(["quantize", "--out", str(tmp_path / "q"), "--target", "vllm-w4afp8", "--group-size", "64"]) == 2
    assert "--group-size 128" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
