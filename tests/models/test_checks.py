"""What dpq.quantize refuses before calibrating (dpq.models.checks), as pure functions and through the API."""

from __future__ import annotations

import pytest
import torch
import transformers

import dpq
import dpq.io.data
import dpq.pipeline
import dpq.api
from dpq.config import ConfigError, QuantConfig
from dpq.models.checks import check_context, check_ignore, matches, quantizable_linears
from dpq.models.specs import GEMMA3, LLAMA

NAMES = quantizable_linears(LLAMA, 2)


def test_quantizable_linears_follow_the_spec():
    assert len(NAMES) == 14
    assert NAMES[:3] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                         "model.layers.0.self_attn.v_proj"]
    assert NAMES[-1] == "model.layers.1.mlp.down_proj"
    assert quantizable_linears(GEMMA3, 1)[0] == "model.language_model.layers.0.self_attn.q_proj"


def test_matches_is_the_drivers_rule():
    from dpq.io import writer
    from dpq.models import driver

    assert matches is driver.is_ignored is writer.is_ignored
    patterns = ["down_proj", "model.layers.0.*", "*.o_proj", "q_*", "self_attn", "1"]
    hits = {p: sum(matches(n, (p,)) for n in NAMES) for p in patterns}
    assert hits == {"down_proj": 2, "model.layers.0.*": 7, "*.o_proj": 2, "q_*": 0, "self_attn": 8, "1": 7}


@pytest.mark.parametrize("pattern, closest", [
    ("down_prj", "down_proj"),
    ("mlp.down_proj", "down_proj"),  # a dotted suffix is neither a component nor a whole-name glob
    ("model.layer.1.mlp.down_proj", "model.layers.1.mlp.down_proj"),
    ("qproj", "q_proj"),
])
def test_unmatched_pattern_names_the_closest(pattern, closest):
    with pytest.raises(ConfigError, match="matches none of the 14 Linears") as e:
        check_ignore((pattern, "o_proj"), NAMES)
    assert f"{pattern!r} (closest: " in str(e.value) and closest in str(e.value)
    assert "'o_proj'" not in str(e.value)


def test_unmatched_patterns_without_close_names():
    with pytest.raises(ConfigError, match=r"'xyzzy' \(no similar name\); 'lm_hed'"):
        check_ignore(("xyzzy", "lm_hed"), NAMES)


@pytest.mark.parametrize("patterns", [("*",), ("model",), ("layers",), ("model.layers.0.*", "model.layers.1.*")])
def test_ignoring_everything_is_refused(patterns):
    with pytest.raises(ConfigError, match="leave all 14 quantizable Linears in high precision"):
        check_ignore(patterns, NAMES)


def test_good_patterns_pass():
    check_ignore((), NAMES)
    check_ignore(("down_proj", "model.layers.0.*", "*.q_proj"), NAMES)


def test_context_from_text_config():
    check_context(transformers.LlamaConfig(max_position_embeddings=512), 512)
    with pytest.raises(ConfigError, match="seq_len=513 is longer than the model's context \\(512 tokens"):
        check_context(transformers.LlamaConfig(max_position_embeddings=512), 513)
    multimodal = transformers.Gemma3Config(text_config={"max_position_embeddings": 64})
    with pytest.raises(ConfigError, match="context \\(64 tokens"):
        check_context(multimodal, 128)


# --- through dpq.quantize: refused before any calibration -------------------------------------------

@pytest.fixture()
def tiny(tiny_llama_dir, monkeypatch):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    return model


def test_config_of_the_wrong_type(tiny, no_calibration):
    with pytest.raises(TypeError, match="config must be a dpq.QuantConfig, .* not str"):
        dpq.quantize(tiny, None, "dpq-gar")
    with pytest.raises(TypeError, match="not dict"):
        dpq.quantize(tiny, None, {"method": "dpq-gar"})


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_bad_batch_size(tiny, no_calibration, batch_size):
    with pytest.raises(ValueError, match="batch_size=.*must be a positive integer"):
        dpq.quantize(tiny, None, QuantConfig.for_method("rtn-w4a8", group_size=32), batch_size=batch_size)


def test_ignore_checked_before_calibration(tiny, no_calibration):
    with pytest.raises(ConfigError, match="closest: down_proj"):
        dpq.quantize(tiny, None, QuantConfig.for_method("dpq", group_size=32, ignore="down_prj"))
    with pytest.raises(ConfigError, match="nothing would be quantized"):
        dpq.quantize(tiny, None, QuantConfig.for_method("dpq", group_size=32, ignore="*"))


def test_seq_len_checked_before_calibration(tiny, no_calibration):
    cfg = QuantConfig.for_method("dpq", group_size=32, calib=dpq.CalibSpec(samples=2, seq_len=4096))
    with pytest.raises(ConfigError, match="seq_len=4096 is longer than the model's context"):
        dpq.quantize(tiny, None, cfg)
    with pytest.raises(ConfigError, match="seq_len=600 is longer"):
        dpq.quantize(tiny, None, QuantConfig.for_method("dpq", group_size=32), calib=torch.zeros(1, 600, dtype=torch.long))


def test_quantizing_twice_is_refused(tiny):
    cfg = QuantConfig.for_method("rtn-w4a16", group_size=32)
    dpq.quantize(tiny, None, cfg, calib=torch.zeros(1, 8, dtype=torch.long), progress=False)
    with pytest.raises(ConfigError, match="already quantized \\(model.layers.0.self_attn.q_proj is a W4A8Linear\\)"):
        dpq.quantize(tiny, None, cfg, calib=torch.zeros(1, 8, dtype=torch.long), progress=False)
