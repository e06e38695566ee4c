"""Model resolution and the bundled models' tokenizers."""

from __future__ import annotations

import pytest

from dpq.models.loading import ModelLoadError, load_float_model, load_tokenizer, resolve


def test_default_is_smollm2():
    src = resolve(None)
    assert src.name == "smollm2-135m" and src.gguf_file.endswith(".gguf")


def test_missing_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve(str(tmp_path / "x.gguf"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve(str(tmp_path))


def test_hub_name_offline_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub name"):
        load_float_model("someone/not-a-cached-model")


def test_local_directory_loads(tiny_llama_dir):
    model, tok, src = load_float_model(str(tiny_llama_dir))
    assert model.config.model_type == "llama" and src.gguf_file is None


def test_smollm2_tokenizer_round_trips(smollm2_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "The capital of France is Paris. Robert Boulter is an English actor."
    smollm2_tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == smollm2_tokenizer(text).input_ids


@pytest.mark.slow
def test_gemma3_tokenizer_is_whole_word_with_bos(tmp_path):
    """transformers' GGUF tokenizer for Gemma 3 was broken in 5.17 (no BOS, words split); dpq needs >= 5.23."""
    from transformers import AutoTokenizer

    tok = load_tokenizer(resolve("gemma3-270m"))
    ids = tok(" Robert Boulter is an English actor").input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<bos>"
    assert pieces[1] == "▁Robert"
    assert len(ids) <= 9  # whole words: <bos> + about one piece per word
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(" Robert Boulter").input_ids == tok(" Robert Boulter").input_ids


# --- a local path that does not exist, a checkpoint given as a float model (issue 24, 16-17) --------

@pytest.mark.parametrize("model", ["./no-such-model", "../x", "/no/such/model", "~/no-such-dpq-model", "a/b/c",
                                   "no-such-dir/", "weights.safetensors", "C:\\models\\x"])
def test_missing_local_path_says_path_does_not_exist(model):
    with pytest.raises(ModelLoadError, match="path does not exist") as e:
        resolve(model)
    assert str(e.value).startswith(f"{model}: path does not exist")


@pytest.mark.parametrize("model", ["someone/some-model", "gpt2", "HuggingFaceTB/SmolLM2-135M"])
def test_hub_names_stay_hub_names(model):
    src = resolve(model)
    assert src.path == model and src.gguf_file is None


def test_home_is_expanded(tmp_path, monkeypatch, tiny_llama_dir):
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(tiny_llama_dir, tmp_path / "m")
    src = resolve("~/m")
    assert src.path == str(tmp_path / "m")


def test_dpq_checkpoint_is_not_a_float_model(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "llama", "quantization_config": {"quant_method": "dpq", "source_model": "/models/float"}}))
    with pytest.raises(ModelLoadError, match="is a dpq checkpoint, already quantized: .*quantized from \\(/models/float\\)"):
        resolve(str(tmp_path))
