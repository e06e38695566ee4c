"""Checks behind dpq.config: the error type, type coercion of settings, the E4M3 grid and target rules.

`dpq.config` re-exports everything here; the kernels and export use the same rules
(`check_fp8_max`, `target_problems`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from dpq.numerics.fp8 import E4M3FN_MAX as FP8_E4M3FN_MAX  # one definition, in numerics

VLLM_GROUP_SIZE = 128
"""The only group size vLLM's W4AFP8 kernel takes."""


class ConfigError(ValueError):
    """A setting is invalid; the message names it and says what is allowed."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# --- types ------------------------------------------------------------------------------------
# Every field of every dataclass below is checked (and normalised) by `_check_types` from its
# annotation: a bool is not accepted as a number, a number not as a bool, a float not as an int.

def _as_int(v, where: str) -> int:
    _check(isinstance(v, numbers.Integral) and not isinstance(v, bool),
           f"{where}={v!r}: must be an integer, not {type(v).__name__}")
    return int(v)


def _as_float(v, where: str) -> float:
    _check(isinstance(v, numbers.Real) and not isinstance(v, bool),
           f"{where}={v!r}: must be a number, not {type(v).__name__}")
    _check(math.isfinite(float(v)), f"{where}={v!r}: must be a finite number")
    return float(v)


def _as_bool(v, where: str) -> bool:
    _check(isinstance(v, bool), f"{where}={v!r}: must be True or False, not {type(v).__name__}")
    return v


def _as_str(v, where: str) -> str:
    _check(isinstance(v, str), f"{where}={v!r}: must be a string, not {type(v).__name__}")
    return v


def _as_patterns(v, where: str) -> tuple[str, ...]:
    """Module-name patterns: a tuple or list of non-empty strings; one str is one pattern (not its characters)."""
    if isinstance(v, str):
        v = (v,)
    _check(isinstance(v, (tuple, list)),
           f"{where}={v!r}: give module-name patterns as a tuple of strings, e.g. ('down_proj',)")
    for p in v:
        _check(isinstance(p, str) and p.strip() != "",
               f"{where}: pattern {p!r} must be a non-empty string (a module name or a glob such as 'model.layers.0.*')")
    return tuple(v)


_CONVERTERS = {
    "int": _as_int,
    "float": _as_float,
    "float | None": lambda v, where: None if v is None else _as_float(v, where),
    "bool": _as_bool,
    "str": _as_str,
    "tuple[str, ...]": _as_patterns,
}


def _check_types(obj) -> None:
    """Check every field of the dataclass `obj` against its annotation, normalising numbers in place."""
    cls = type(obj).__name__
    for f in dataclasses.fields(obj):
        v, where = getattr(obj, f.name), f"{cls}.{f.name}"
        conv = _CONVERTERS.get(f.type)
        if conv is not None:
            object.__setattr__(obj, f.name, conv(v, where))
        else:  # a nested spec: WeightSpec, FP8Spec, ... (defined in dpq.config, which imports this module)
            _check(type(v).__name__ == f.type and dataclasses.is_dataclass(v),
                   f"{where} must be a {f.type}, not {type(v).__name__} ({v!r})")


# --- FP8 and target rules -----------------------------------------------------------------------

def _e4m3_exponent(x: float) -> int:
    """E of x = 1.mmm * 2^E on the E4M3 grid (values below 2^-6 are subnormals of 2^-6)."""
    return max(math.frexp(x)[1] - 1, -6)


def is_e4m3(x: float) -> bool:
    """x is a positive value of the FP8 E4M3FN grid no larger than 448 (2^-9 ... 224, 240, 256, ... 448)."""
    if not 0 < x <= FP8_E4M3FN_MAX:
        return False
    return (x / 2.0 ** (_e4m3_exponent(x) - 3)).is_integer()  # 3 mantissa bits: the grid step is 2^(E - 3)


def check_fp8_max(fp8_max, where: str = "fp8_max") -> float:
    """F as a float: an E4M3 value in (0, 448] (448 for E4M3FN hardware, 240 for Gaudi 2), else ConfigError.

    The one definition of a valid F: FP8Spec and the Triton kernel both call it. F must lie on the
    E4M3 grid so that saturating at +-F and casting to E4M3 give the same values everywhere.
    """
    f = _as_float(fp8_max, where)
    if is_e4m3(f):
        return f
    if 0 < f < FP8_E4M3FN_MAX:
        step = 2.0 ** (_e4m3_exponent(f) - 3)
        lo = math.floor(f / step) * step
        near = " and ".join(f"{v:g}" for v in (lo, lo + step) if v > 0)
        nearest = f"the E4M3 values nearest {f:g}: {near}"
    else:
        nearest = "F must be in (0, 448]"
    raise ConfigError(f"{where}={f:g} is not an FP8 E4M3 value: use 448 (E4M3FN: NVIDIA Hopper/Ada/Blackwell, "
                      f"Gaudi 3, MI350) or 240 (Gaudi 2); {nearest}")


def target_problems(target: str, *, fp8_max: float | None, group_size: int | None = None,
                    symmetric: bool | None = None) -> list[str]:
    """Why settings cannot run on `target` ([] when they can); None for group_size/symmetric: not known here.

    "vllm-w4afp8" is vLLM's W4AFP8 kernel: symmetric INT4 (no zero points), group size 128, FP8 E4M3FN
    activations (F = 448) quantized per token. The one definition of these rules: QuantConfig and
    W4A8Linear both call it.
    """
    if target != "vllm-w4afp8":
        return []
    problems = []
    if fp8_max is None:
        problems.append("it needs FP8 activations, and this is a W4A16 method (use a W4A8 method)")
    elif fp8_max != FP8_E4M3FN_MAX:
        problems.append(f"it needs F = 448, got fp8_max={fp8_max:g} (use --fp8-max 448)")
    if group_size is not None and group_size != VLLM_GROUP_SIZE:
        problems.append(f"it needs group size 128, got {group_size} (use --group-size 128)")
    if symmetric is False:
        problems.append("it needs symmetric INT4 weights (its kernel has no zero points), got asymmetric "
                        "(use symmetric=True, --sym)")
    return problems


def check_target(target: str, **settings) -> None:
    """ConfigError naming every rule of `target` these settings break (see `target_problems`)."""
    problems = target_problems(target, **settings)
    _check(not problems, f"target {target} runs vLLM's W4AFP8 kernel: " + "; ".join(problems))
