"""transformers' from_pretrained on dpq checkpoints: same model as dpq.load, checks, save_pretrained, shards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import dpq
from dpq.io import checkpoint as ckpt
from dpq.io.checkpoint import CheckpointError

PROMPT = "The capital of France is Paris. Robert Boulter is an English actor."


def _tiny_llama(tok, inter: int = 160):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=inter, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


def _quantize_and_save(tok, out, method="dpq-gar", inter=160):
    model = _tiny_llama(tok, inter)
    cfg = dpq.QuantConfig.for_method(method, group_size=32)
    calib = torch.randint(0, len(tok), (2, 32), generator=torch.Generator().manual_seed(0))
    result = dpq.quantize(model, tok, cfg, calib=calib, progress=False)
    dpq.save(result, out)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, smollm2_tokenizer):
    """(checkpoint dir, logits of the in-memory quantized model on PROMPT)."""
    out = tmp_path_factory.mktemp("hfq") / "ck"
    model = _quantize_and_save(smollm2_tokenizer, out)
    with torch.no_grad():
        logits = model(_ids(smollm2_tokenizer)).logits
    return out, logits


def _ids(tok):
    return tok(PROMPT, return_tensors="pt").input_ids


def _logits(model, tok):
    with torch.no_grad():
        return model(_ids(tok)).logits


def _copy(src, tmp_path, name="c"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _refresh_manifest(path):
    """Rewrite the manifest for the files now in `path` (so only the other checks can catch a change)."""
    files = {p.name: {"sha256": ckpt._sha256(p), "bytes": p.stat().st_size}
             for p in sorted(path.iterdir()) if p.is_file() and p.name != ckpt.MANIFEST}
    (path / ckpt.MANIFEST).write_text(json.dumps({"format_version": 2, "files": files}))


def _auto(path, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kw)


# --- the same model as dpq.load ----------------------------------------------------------

def test_from_pretrained_is_the_saved_model_bit_for_bit(saved, smollm2_tokenizer):
    from dpq.nn.linear import W4A8Linear

    path, want = saved
    model = _auto(path)
    assert isinstance(model.model.layers[1].mlp.down_proj, W4A8Linear)
    assert model.model.layers[1].mlp.down_proj.weight.dtype == torch.uint8
    assert torch.equal(_logits(model, smollm2_tokenizer), want)
    loaded, tok = dpq.load(path)
    assert torch.equal(_logits(loaded, tok), want)
    assert model.config.quantization_config.method == "dpq-gar"


def test_dtype_casts_only_the_float_tensors(saved, smollm2_tokenizer):
    path, _ = saved
    model = _auto(path, dtype=torch.bfloat16)
    lin = model.model.layers[0].self_attn.q_proj
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert lin.input_scale.dtype == torch.float32 and lin.weight_scale.dtype == torch.float32  # s_x, s_w exact
    assert lin.weight.dtype == torch.uint8 and lin.zeros.dtype == torch.uint8
    ref = load_file(path / ckpt.WEIGHTS)
    assert float(lin.input_scale) == float(ref["model.layers.0.self_attn.q_proj.input_scale"])
    loaded, _ = dpq.load(path, dtype=torch.bfloat16)
    assert torch.equal(_logits(model, smollm2_tokenizer), _logits(loaded, smollm2_tokenizer))


@pytest.mark.parametrize("device_map", ["cpu", "auto", {"": "cpu"}])
def test_device_map(saved, smollm2_tokenizer, device_map):
    path, want = saved
    assert torch.equal(_logits(_auto(path, device_map=device_map), smollm2_tokenizer), want)


def test_pipeline_text_generation(saved, smollm2_tokenizer):
    from transformers import pipeline

    path, _ = saved
    pipe = pipeline("text-generation", model=str(path))
    text = pipe("The capital of France is", max_new_tokens=6, do_sample=False)[0]["generated_text"]
    model, tok = dpq.load(path)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
    assert text == tok.decode(out[0], skip_special_tokens=True)


def test_quantizing_on_load_is_refused(tiny_llama_dir):
    from dpq.integrations.hf_quantizer import DpqConfig

    with pytest.raises(ValueError, match="pre-quantized"):
        _auto(tiny_llama_dir, quantization_config=DpqConfig())


# --- save_pretrained ------------------------------------------------------------------------

def test_save_pretrained_round_trip(saved, smollm2_tokenizer, tmp_path):
    path, want = saved
    _auto(path).save_pretrained(tmp_path / "hf")
    out = tmp_path / "hf"
    assert not (out / ckpt.MANIFEST).exists()
    assert json.loads((out / "config.json").read_text())["quantization_config"]["manifest"] is False
    assert torch.equal(_logits(_auto(out), smollm2_tokenizer), want)
    again, _ = dpq.load(out)
    assert torch.equal(_logits(again, smollm2_tokenizer), want)
    assert dpq.info(out)["quantized_linears"] == 14


def test_hf_saved_directory_keeps_the_tensor_checks(saved, tmp_path):
    path, _ = saved
    _auto(path).save_pretrained(tmp_path / "hf")
    f = tmp_path / "hf" / ckpt.WEIGHTS
    t = load_file(f)
    key = "model.layers.0.mlp.up_proj.scales"
    t[key] = t[key].clone()
    t[key][1, 1] = float("nan")
    save_file(t, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"{key} holds NaN"):
        _auto(tmp_path / "hf")


# --- corruption: from_pretrained and dpq info say what is wrong ---------------------------------

def _flip_byte(p):
    f = p / ckpt.WEIGHTS
    data = bytearray(f.read_bytes())
    data[-100] ^= 0xFF
    f.write_bytes(bytes(data))


def _nan_scales(p):
    f = p / ckpt.WEIGHTS
    t = load_file(f)
    key = "model.layers.1.self_attn.o_proj.scales"
    t[key] = t[key].clone()
    t[key][0, 0] = float("nan")
    save_file(t, f, metadata={"format": "pt"})
    _refresh_manifest(p)


def _nan_embedding(p):
    f = p / ckpt.WEIGHTS
    t = load_file(f)
    t["model.embed_tokens.weight"][3, 3] = float("inf")
    save_file(t, f, metadata={"format": "pt"})
    _refresh_manifest(p)


CORRUPTIONS = {
    "flipped byte": (_flip_byte, "does not match its sha256"),
    "NaN scales": (_nan_scales, "o_proj.scales holds NaN"),
    "Inf embedding": (_nan_embedding, "embed_tokens.weight holds NaN or Inf"),
    "no manifest": (lambda p: (p / ckpt.MANIFEST).unlink(), "has no dpq_manifest.json"),
    "manifest {}": (lambda p: (p / ckpt.MANIFEST).write_text("{}"), "dpq_manifest.json has no valid \"files\""),
    "manifest not JSON": (lambda p: (p / ckpt.MANIFEST).write_text("{files: "), "dpq_manifest.json is not valid JSON"),
    "manifest without the weights": (
        lambda p: (p / ckpt.MANIFEST).write_text(json.dumps({"files": {}})), "does not list config.json"),
    "truncated weights": (lambda p: (p / ckpt.WEIGHTS).write_bytes((p / ckpt.WEIGHTS).read_bytes()[:5000]),
                          "truncated"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_is_refused_by_from_pretrained_and_info(saved, tmp_path, case):
    from safetensors import SafetensorError

    damage, message = CORRUPTIONS[case]
    p = _copy(saved[0], tmp_path)
    damage(p)
    with pytest.raises(CheckpointError, match=message):
        dpq.info(p)
    with pytest.raises(CheckpointError, match=message):
        dpq.load(p)
    if case == "truncated weights":  # config.json has no dtype: transformers reads the header itself first
        with pytest.raises((CheckpointError, SafetensorError)):
            _auto(p)
    else:
        with pytest.raises(CheckpointError, match=message):
            _auto(p)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all" * 10, None])
def test_info_on_garbage_or_truncated_weights_without_manifest(saved, tmp_path, content, capsys):
    """Without a manifest to compare with (a save_pretrained directory), the file itself must be readable."""
    from dpq.cli import main

    p = tmp_path / "hf"
    _auto(saved[0]).save_pretrained(p)
    f = p / ckpt.WEIGHTS
    f.write_bytes(content if content is not None else f.read_bytes()[:-64])
    capsys.readouterr()
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors cannot be read" in err and "truncated or corrupted" in err
    assert len(err.strip().splitlines()) == 1


# --- sharded checkpoints ---------------------------------------------------------------------

def _shard(p, parts=2):
    """Split model.safetensors into transformers' model-0000i-of-0000n.safetensors + index; refresh the manifest."""
    t = load_file(p / ckpt.WEIGHTS)
    keys = sorted(t)
    weight_map = {}
    for i in range(parts):
        name = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {k: t[k] for k in keys[i::parts]}
        save_file(chunk, p / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
    total = sum(v.numel() * v.element_size() for v in t.values())
    (p / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                 "weight_map": weight_map}))
    (p / ckpt.WEIGHTS).unlink()
    _refresh_manifest(p)


def test_sharded_checkpoint_loads_the_same(saved, tmp_path, smollm2_tokenizer):
    path, want = saved
    p = _copy(path, tmp_path)
    _shard(p)
    assert torch.equal(_logits(_auto(p), smollm2_tokenizer), want)
    loaded, _ = dpq.load(p)
    assert torch.equal(_logits(loaded, smollm2_tokenizer), want)
    assert dpq.info(p)["quantized_weight_bytes"] == dpq.info(path)["quantized_weight_bytes"]


def test_sharded_checkpoint_with_a_missing_shard(saved, tmp_path):
    p = _copy(saved[0], tmp_path)
    _shard(p)
    (p / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors is missing"):
        dpq.info(p)
    with pytest.raises((CheckpointError, OSError), match="model-00002-of-00002.safetensors"):
        _auto(p)


def test_sharded_checkpoint_with_a_corrupt_index(saved, tmp_path):
    p = _copy(saved[0], tmp_path)
    _shard(p)
    (p / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(CheckpointError, match="index.json is not a valid safetensors index .*: the checkpoint is corrupted"):
        dpq.info(p)


def test_format_version_1_loads_through_from_pretrained(saved, tmp_path, smollm2_tokenizer):
    path, want = saved
    p = _copy(path, tmp_path)
    cfg = json.loads((p / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 1
    cfg["quantization_config"]["settings"]["format_version"] = 1
    (p / "config.json").write_text(json.dumps(cfg))
    t = load_file(p / ckpt.WEIGHTS)
    for m in cfg["quantization_config"]["modules"]:
        t[f"{m}.qweight"] = t.pop(f"{m}.weight")
    save_file(t, p / ckpt.WEIGHTS, metadata={"format": "pt"})
    _refresh_manifest(p)
    assert torch.equal(_logits(_auto(p), smollm2_tokenizer), want)


# --- without dpq: no silent random weights --------------------------------------------------------

NO_DPQ = """
import sys
from transformers import AutoModelForCausalLM
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1])
except RuntimeError as e:
    print("REFUSED:", str(e).splitlines()[0])
else:
    print("LOADED")
print("dpq imported:", "dpq" in sys.modules)
"""


@pytest.mark.parametrize("inter", [160, 161], ids=["even K", "odd K"])
def test_without_dpq_from_pretrained_fails_loudly(tmp_path, smollm2_tokenizer, inter):
    """Format 2 stores the packed codes as `weight` ([N, ceil(K/2)] uint8): a transformers that does not know
    dpq sees a size mismatch for every quantized Linear and raises, instead of initialising them randomly."""
    out = tmp_path / "ck"
    _quantize_and_save(smollm2_tokenizer, out, method="rtn-w4a8", inter=inter)
    assert load_file(out / ckpt.WEIGHTS)["model.layers.0.mlp.down_proj.weight"].shape == (96, (inter + 1) // 2)
    res = subprocess.run([sys.executable, "-c", NO_DPQ, str(out)], capture_output=True, text=True, timeout=300)
    assert "REFUSED: You set `ignore_mismatched_sizes` to `False`" in res.stdout, res.stdout + res.stderr[-2000:]
    assert "dpq imported: False" in res.stdout
    assert "down_proj.weight" in res.stderr and "MISMATCH" in res.stderr  # transformers' load report


# --- lm-eval takes the model as it is -----------------------------------------------------------

def test_hflm_takes_a_dpq_load_model(saved):
    """HFLM(pretrained=model) accepts the model as dpq.load returns it (config object or plain dict) and scores
    a continuation with the model's own log-probabilities."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = dpq.load(saved[0])
    ctx, cont = "The capital of France is", " Paris"
    ids = tok(ctx + cont, return_tensors="pt").input_ids
    n = len(tok(cont).input_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    want = float(logp[-n:].gather(1, ids[0, -n:, None]).sum())
    for qc in (model.config.quantization_config, model.config.quantization_config.to_dict()):
        model.config.quantization_config = qc
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
        (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, (ctx, cont), 0)], disable_tqdm=True)
        assert ll == pytest.approx(want, abs=1e-3)


# --- a real model (slow) -----------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_from_pretrained_is_the_saved_model(smollm2, tmp_path):
    """SmolLM2-135M (RTN W4A8 g64, static FP8 scales from 2 x 64 tokens): from_pretrained and dpq.load
    give the in-memory quantized model's logits bit for bit."""
    import copy

    model, tok = smollm2
    model = copy.deepcopy(model)
    cfg = dpq.QuantConfig.for_method("rtn-w4a8", group_size=64, calib=dpq.CalibSpec(samples=2, seq_len=64))
    result = dpq.quantize(model, tok, cfg, progress=False)
    path = dpq.save(result, tmp_path / "ck")
    want = _logits(model, tok)
    assert torch.equal(_logits(_auto(path), tok), want)
    loaded, ltok = dpq.load(path)
    assert torch.equal(_logits(loaded, ltok), want)
