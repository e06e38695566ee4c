"""Streaming quantization from safetensors shards: same bytes as the in-memory path, resume after
SIGKILL, refusal of another run's leftovers, one layer materialized at a time."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dpq
from dpq.config import CalibSpec, QuantConfig
from dpq.io.outdir import OutputError, claim, partial_dir
from dpq.models.loading import load_float_model, resolve
from dpq.models.source import SafetensorsSource, SourceError, open_source

CFG = QuantConfig.for_method("dpq-gar", group_size=32, calib=CalibSpec(samples=4, seq_len=32))
SHARD = "200KB"  # the tiny model's checkpoint spreads over several shards


def _digests(path) -> dict[str, str]:
    return {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in sorted(os.listdir(path))}


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory, smollm2_tokenizer):
    """A 3-layer random Llama in bf16, saved by transformers as three safetensors shards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2_tokenizer
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    d = tmp_path_factory.mktemp("sharded") / "model"
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d, max_shard_size="2MB")
    tok.save_pretrained(d)
    assert (d / "model.safetensors.index.json").is_file()
    return d


@pytest.fixture(scope="module")
def streamed(sharded_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("streamed") / "q"
    return dpq.quantize_to_disk(str(sharded_dir), str(out), CFG, max_shard_size=SHARD, progress=False)


def test_streaming_writes_the_same_bytes_as_the_in_memory_path(sharded_dir, streamed, tmp_path):
    model, tok, src = load_float_model(str(sharded_dir), dtype=torch.bfloat16)
    result = dpq.quantize(model, tok, CFG, progress=False)
    dpq.save(result, tmp_path / "mem", source_model=src.reference, max_shard_size=SHARD)
    ours = _digests(streamed.path)
    assert ours == _digests(tmp_path / "mem")
    assert "model.safetensors.index.json" in ours and sum(f.endswith(".safetensors") for f in ours) >= 3


def test_sharded_checkpoint_round_trips(sharded_dir, streamed):
    path = streamed.path
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for s in shards:  # at most the size (+ its header), unless one tensor alone is larger (the embeddings)
        with safe_open(str(path / s), framework="pt") as f:
            assert (path / s).stat().st_size <= 200_000 + 4096 or len(list(f.keys())) == 1
    manifest = json.loads((path / "dpq_manifest.json").read_text())["files"]
    assert set(shards) <= set(manifest)
    total = 0
    for s in shards:  # every shard is a plain safetensors file
        with safe_open(str(path / s), framework="pt") as f:
            total += sum(f.get_slice(k).get_shape() != [] for k in f.keys())
    assert total > 0
    q, tok = dpq.load(path)
    ids = tok("Streaming keeps the function.", return_tensors="pt").input_ids
    model, _, _ = load_float_model(str(sharded_dir), dtype=torch.bfloat16)
    mem = dpq.quantize(model, tok, CFG, progress=False).model
    with torch.no_grad():
        assert torch.equal(q(ids).logits, mem(ids).logits)
    assert dpq.info(path)["quantized_linears"] == 21


def test_time_by_phase_is_reported(streamed):
    phases = streamed.summary.phases
    assert set(phases) >= {"load", "forward", "hessian", "solve", "error", "save"}
    assert all(v >= 0 for v in phases.values()) and phases["solve"] > 0


def test_only_the_current_layer_is_materialized(sharded_dir):
    source = SafetensorsSource(resolve(str(sharded_dir)), "auto")
    layers = source.model.model.layers
    assert all(p.device.type == "meta" for p in source.model.parameters())
    seen = []

    class Check:
        def layer_done(self, i, prefix, layer, hidden, summary):
            states = ["meta" if next(layers[j].parameters(), torch.empty(0, device="meta")).device.type == "meta"
                      and all(t.device.type == "meta" for t in layers[j].state_dict().values()) else "real"
                      for j in range(len(layers))]
            seen.append(states)

    from dpq.models.driver import quantize_model

    quantize_model(source.model, torch.randint(0, 1000, (2, 16)), CFG, progress=False, source=source, sink=Check())
    # at layer i: the earlier layers are released, the later ones never read, only layer i is real
    assert seen == [["real", "meta", "meta"], ["meta", "real", "meta"], ["meta", "meta", "real"]]
    assert source.model.model.embed_tokens.weight.device.type == "meta"  # released after input capture


_KILLER = textwrap.dedent("""
    import os, signal, sys
    import dpq.pipeline as p
    done = p._Sink.layer_done
    def layer_done(self, i, *args):
        done(self, i, *args)
        if i == 1:  # after the second layer is written: die as a SIGKILL would leave it
            os.kill(os.getpid(), signal.SIGKILL)
    p._Sink.layer_done = layer_done
    from dpq.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _cli_args(sharded_dir, out, *extra):
    return ["quantize", str(sharded_dir), "--out", str(out), "--method", "dpq-gar", "--group-size", "32",
            "--calib-samples", "4", "--calib-seq-len", "32", "--max-shard-size", SHARD, *extra]


def test_sigkill_after_two_layers_then_resume_gives_the_same_bytes(sharded_dir, streamed, tmp_path, capsys):
    out = tmp_path / "q"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _KILLER, *_cli_args(sharded_dir, out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()
    state = json.loads((partial_dir(out) / "state.json").read_text())
    assert state["units_done"] == 3 and state["inputs"] == "inputs-00002"  # unit 0 + layers 0 and 1
    from dpq.cli import main

    assert main(_cli_args(sharded_dir, out)) == 0
    assert "resumed at layer 2/3" in capsys.readouterr().out
    assert _digests(out) == _digests(streamed.path)
    assert not partial_dir(out).exists()


def test_resume_with_other_settings_is_refused(sharded_dir, tmp_path, capsys):
    out = tmp_path / "q"
    c = claim(out)  # an interrupted run of other settings left its state
    (c.root / "state.json").write_text(json.dumps({"fingerprint": "other", "units_done": 2, "inputs": None,
                                                   "rows": {}}))
    c.release(remove=False)
    from dpq.cli import main

    assert main(_cli_args(sharded_dir, out)) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert (partial_dir(out) / "state.json").is_file()  # kept: it is another run's progress
    assert main(_cli_args(sharded_dir, out, "--restart")) == 0
    assert (out / "dpq_manifest.json").is_file() and not partial_dir(out).exists()


def test_a_live_run_holding_the_output_is_refused(sharded_dir, tmp_path, capsys):
    out = tmp_path / "q"
    holder = claim(out)  # as a concurrent `dpq quantize` with the same --out holds it
    try:
        from dpq.cli import main

        assert main(_cli_args(sharded_dir, out)) == 2
        assert "another dpq run is writing" in capsys.readouterr().err
    finally:
        holder.release()
    assert not out.exists()


def test_offloaded_activations_give_the_same_bytes(sharded_dir, streamed, tmp_path):
    out = tmp_path / "q"
    dpq.quantize_to_disk(str(sharded_dir), str(out), CFG, max_shard_size=SHARD, progress=False,
                         offload_dir=str(tmp_path / "offload"))
    assert _digests(out) == _digests(streamed.path)
    assert list((tmp_path / "offload").iterdir()) == []  # the memory-mapped files are gone


def test_float_stream_and_deferred_inputs_go_to_the_offload_dir(sharded_dir, tmp_path, monkeypatch):
    """dpq-gar-plus keeps every set's inputs (and the float model's) until the set is solved: with
    --offload-dir they are memory-mapped files too, and the checkpoint is the same bytes."""
    from dpq.models.activations import OffloadedList

    cfg = QuantConfig.for_method("dpq-gar-plus", group_size=32, calib=CalibSpec(samples=2, seq_len=32))
    dpq.quantize_to_disk(str(sharded_dir), str(tmp_path / "mem"), cfg, max_shard_size=SHARD, progress=False)
    widths: list[int] = []
    append = OffloadedList.append
    monkeypatch.setattr(OffloadedList, "append", lambda self, t: (widths.append(t.shape[-1]), append(self, t))[1])
    dpq.quantize_to_disk(str(sharded_dir), str(tmp_path / "off"), cfg, max_shard_size=SHARD, progress=False,
                         offload_dir=str(tmp_path / "offload"))
    assert _digests(tmp_path / "off") == _digests(tmp_path / "mem")
    assert 96 in widths  # down_proj's inputs (intermediate size 96): only the deferred and float records have them
    assert list((tmp_path / "offload").iterdir()) == []


def test_missing_source_tensor_is_named(sharded_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded_dir, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    key = "model.layers.1.mlp.down_proj.weight"
    shard = broken / index["weight_map"][key]
    tensors = load_file(shard)
    del tensors[key]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(SourceError, match=key.replace(".", r"\.")):
        open_source(str(broken))
    from dpq.cli import main

    assert main(["quantize", str(broken), "--out", str(tmp_path / "q"), "--method", "rtn-w4a16"]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "q").exists() and not partial_dir(tmp_path / "q").exists()


@pytest.mark.parametrize("index", ["{not json", '{"metadata": {}}', '{"weight_map": ["a"]}'])
def test_corrupt_source_index_is_named(sharded_dir, tmp_path, capsys, index):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded_dir, broken)
    (broken / "model.safetensors.index.json").write_text(index)
    with pytest.raises(SourceError, match="model.safetensors.index.json is not a valid safetensors index"):
        open_source(str(broken))
    from dpq.cli import main

    assert main(["quantize", str(broken), "--out", str(tmp_path / "q"), "--method", "rtn-w4a16"]) == 2
    assert "is not a valid safetensors index" in capsys.readouterr().err
    assert not (tmp_path / "q").exists() and not partial_dir(tmp_path / "q").exists()


def test_unexpected_source_tensor_is_named(sharded_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded_dir, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shard = broken / index["weight_map"]["model.norm.weight"]
    tensors = load_file(shard)
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(SourceError, match=r"model\.layers\.0\.mlp\.extra_proj\.weight"):
        open_source(str(broken))


def test_dtype_auto_is_the_sources_and_can_be_overridden(sharded_dir):
    assert open_source(str(sharded_dir)).dtype == torch.bfloat16
    assert open_source(str(sharded_dir), "float32").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype 'int8'"):
        open_source(str(sharded_dir), "int8")


def test_same_inputs_same_bytes(sharded_dir, streamed, tmp_path):
    again = dpq.quantize_to_disk(str(sharded_dir), str(tmp_path / "again"), CFG, max_shard_size=SHARD,
                                 progress=False)
    assert _digests(again.path) == _digests(streamed.path)
