"""QuantConfig and its specs: every field's type, the E4M3 rule for F, the vllm-w4afp8 target's rules."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dpq.config import (
    ActSpec,
    CalibSpec,
    ConfigError,
    FP8Spec,
    QuantConfig,
    SolverSpec,
    WeightSpec,
    check_fp8_max,
    is_e4m3,
)

SPECS = (WeightSpec, FP8Spec, ActSpec, SolverSpec, CalibSpec, QuantConfig)

# A value of the wrong type for each annotation, and a bool where a number is expected.
WRONG = {
    "int": [True, 1.5, "4", None],
    "float": [True, "1", None, float("nan")],
    "float | None": [True, "448", float("inf")],
    "bool": [1, 0, "yes", None],
    "str": [1, None, b"x"],
    "tuple[str, ...]": [1, None, ("",), ("down_proj", 3), {"down_proj"}],
}


def _fields():
    for cls in SPECS:
        for f in dataclasses.fields(cls):
            yield cls, f


@pytest.mark.parametrize("cls, f", list(_fields()), ids=lambda x: getattr(x, "__name__", getattr(x, "name", "")))
def test_every_field_refuses_a_wrong_type(cls, f):
    """Case 8: every field of every dataclass is type-checked (nested specs must be spec instances)."""
    bad = WRONG.get(f.type, [{"a": 1}, "x", 3])  # a nested spec: a dict, a str, an int
    for value in bad:
        with pytest.raises(ConfigError, match=f"{cls.__name__}.{f.name}|{f.name}="):
            dataclasses.replace(cls(), **{f.name: value})


def test_every_annotation_has_wrong_values_listed():
    """A new field with a new annotation must get its own wrong values here (and a converter in config.py)."""
    nested = {c.__name__ for c in SPECS}
    assert {f.type for _, f in _fields()} - nested <= set(WRONG)


def test_ignore_given_as_a_str_is_one_pattern():
    """Case 8: ignore="down_proj" is the pattern down_proj, not the characters d, o, w, n, ..."""
    cfg = QuantConfig.for_method("dpq", ignore="down_proj")
    assert cfg.ignore == ("down_proj",)
    assert QuantConfig(ignore="o_proj").ignore == ("o_proj",)
    assert QuantConfig(ignore=["a", "b"]).ignore == ("a", "b")
    back = QuantConfig.from_dict({**cfg.to_dict(), "ignore": "down_proj"})
    assert back.ignore == ("down_proj",)


def test_fp8_max_true_is_refused():
    """Case 8: fp8_max=True used to be stored and run as F = 1."""
    with pytest.raises(ConfigError, match="fp8_max=True: must be a number, not bool"):
        QuantConfig.for_method("dpq", fp8_max=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(group_size=128.0), "group_size=128.0: must be an integer"),
    (dict(group_size=True), "group_size=True: must be an integer, not bool"),
    (dict(symmetric=1), "symmetric=1: must be True or False"),
    (dict(damp="0.01"), "damp='0.01': must be a number"),
    (dict(act_order=1), "act_order=1: must be True or False"),
    (dict(calib={"samples": 4}), "QuantConfig.calib must be a CalibSpec"),
    (dict(act="percentile"), "QuantConfig.act must be a ActSpec"),
    (dict(ignore=[None]), "pattern None must be a non-empty string"),
])
def test_for_method_refuses_wrong_types(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        QuantConfig.for_method("dpq", **kwargs)


def test_numbers_are_normalised():
    import numpy as np

    cfg = QuantConfig.for_method("dpq", group_size=np.int64(64), fp8_max=240, damp=0)
    assert type(cfg.weight.group_size) is int and cfg.fp8.fp8_max == 240.0 and type(cfg.fp8.fp8_max) is float
    assert type(cfg.solver.damp) is float
    assert cfg == QuantConfig.from_dict(cfg.to_dict())


# --- F: E4M3 values only (case 10) -------------------------------------------------------------

def test_is_e4m3_is_exactly_the_positive_e4m3fn_grid():
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = {float(v) for v in grid if torch.isfinite(v) and 0 < v <= 448}
    assert len(values) == 126 and all(is_e4m3(v) for v in values)
    probes = torch.linspace(0.001, 460, 20001).tolist() + [v * 1.001 for v in values]
    assert all(is_e4m3(x) == (x in values) for x in probes)


@pytest.mark.parametrize("f", [100, 447, 1000, 0, -240, 241])
def test_non_e4m3_fp8_max_is_refused(f):
    with pytest.raises(ConfigError, match=f"fp8_max={f:g} is not an FP8 E4M3 value"):
        FP8Spec(f)


def test_refusal_names_the_nearest_e4m3_values():
    with pytest.raises(ConfigError, match="nearest 100: 96 and 104"):
        QuantConfig.for_method("rtn-w4a8", fp8_max=100)


@pytest.mark.parametrize("f", [448, 240, 224, 256, 288])
def test_e4m3_fp8_max_is_accepted(f):
    assert FP8Spec(f).fp8_max == float(f) == check_fp8_max(f)


def test_kernel_uses_the_same_rule():
    from dpq.kernels.triton_w4a8 import check_fp8_max as kernel_check

    assert kernel_check(240) == 240.0
    with pytest.raises(ConfigError, match="fp8_max=100 is not an FP8 E4M3 value"):
        kernel_check(100)
    with pytest.raises(ConfigError, match="must be a number, not bool"):
        kernel_check(True)


# --- the vllm-w4afp8 target (case 9) -----------------------------------------------------------

def test_vllm_target_refuses_asymmetric_weights_with_the_reason():
    with pytest.raises(ConfigError, match="needs symmetric INT4 weights .* got asymmetric"):
        QuantConfig.for_method("rtn-w4a8", target="vllm-w4afp8", symmetric=False)


def test_vllm_target_defaults_to_symmetric():
    """for_method documents symmetric=None as the target's own: symmetric for vllm-w4afp8."""
    cfg = QuantConfig.for_method("rtn-w4a8", target="vllm-w4afp8")
    assert cfg.weight.symmetric is True
    assert QuantConfig.for_method("rtn-w4a8").weight.symmetric is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(group_size=64), "needs group size 128, got 64"),
    (dict(fp8_max=240), "needs F = 448, got fp8_max=240"),
    (dict(method="rtn-w4a16"), "needs FP8 activations"),
])
def test_vllm_target_rules(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QuantConfig.for_method(kwargs.pop("method", "dpq"), target="vllm-w4afp8", **kwargs)


def test_vllm_rules_hold_for_direct_construction_and_checkpoints():
    good = QuantConfig.for_method("dpq", target="vllm-w4afp8")
    with pytest.raises(ConfigError, match="got asymmetric"):
        dataclasses.replace(good, weight=WeightSpec(symmetric=False))
    bad = {**good.to_dict(), "weight": {**good.to_dict()["weight"], "symmetric": False}}
    with pytest.raises(ConfigError, match="got asymmetric"):
        QuantConfig.from_dict(bad)


def test_module_uses_the_same_rule():
    from dpq.nn.linear import W4A8Linear

    with pytest.raises(ConfigError, match="needs F = 448"):
        W4A8Linear(128, 128, False, 128, 240.0, target="vllm-w4afp8")
    with pytest.raises(ConfigError, match="needs group size 128"):
        W4A8Linear(128, 128, False, 64, 448.0, target="vllm-w4afp8")
    W4A8Linear(128, 128, False, 128, 448.0, target="vllm-w4afp8")


def test_the_default_method_is_dpq_gar_plus_everywhere():
    from dpq.cli import build_parser
    from dpq.config import DEFAULT_METHOD, METHOD_OPTIONS

    assert DEFAULT_METHOD == "dpq-gar-plus"
    cfg = QuantConfig()
    assert cfg == QuantConfig.for_method() == QuantConfig.for_method(DEFAULT_METHOD)
    assert all(getattr(cfg.solver, k) == v for k, v in METHOD_OPTIONS[DEFAULT_METHOD].items())
    assert build_parser().parse_args(["quantize", "--out", "x"]).method == DEFAULT_METHOD
    paper = QuantConfig.for_method("dpq-gar").solver  # the paper's method keeps every option off
    assert not (paper.group_search or paper.deployed_hessian or paper.asym_alpha or paper.smooth)
