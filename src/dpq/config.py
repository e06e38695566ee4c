"""Typed, validated, versioned settings for every part of dpq.

Every later piece (solvers, calibration driver, checkpoint, kernels) takes one
of these frozen dataclasses. `QuantConfig.to_dict()` / `from_dict()` is what a
checkpoint stores in `config.json["quantization_config"]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dpq.config_checks import (  # noqa: F401 - re-exported: dpq.config is where settings and their checks live
    FP8_E4M3FN_MAX,
    VLLM_GROUP_SIZE,
    ConfigError,
    _as_bool,
    _check,
    _check_types,
    check_fp8_max,
    check_target,
    is_e4m3,
    target_problems,
)

FORMAT_VERSION = 2
"""Version of the checkpoint format and of `QuantConfig.to_dict()`. Version 2 stores a quantized
Linear's packed codes as `weight` (version 1: `qweight`), so that a loader without dpq stops on the
shape mismatch instead of leaving the Linear randomly initialised; the settings are the same."""
READABLE_FORMAT_VERSIONS = (1, 2)
"""Checkpoint format versions this dpq reads."""

METHODS = ("dpq-gar", "dpq-gar-plus", "dpq", "gptq-w4a16", "naive-w4a8", "rtn-w4a8", "rtn-w4a16")
"""Quantization methods, the default first."""


FP8_AWARE_METHODS = ("dpq", "dpq-gar", "dpq-gar-plus")
"""Methods whose solver compensates the FP8 rounding of the weight (DPQ)."""
GAR_METHODS = ("dpq-gar", "dpq-gar-plus")
"""Methods that visit columns in group-aware order."""
SOLVER_OPTIONS = ("group_search", "deployed_hessian", "asym_alpha", "smooth", "token_clip", "refine_steps")
"""SolverSpec's options beyond the paper, settable per run (`QuantConfig.for_method(..., **options)`)."""
DEFAULT_METHOD = "dpq-gar-plus"
"""What `dpq quantize` and `QuantConfig.for_method()` use when no method is named: the paper's DPQ-GAR plus
the options beyond it that measured best (docs/results/beyond-the-paper.md)."""

METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "dpq-gar-plus": {"group_search": True, "deployed_hessian": True, "asym_alpha": 0.5},
}
"""The options a named method turns on (none for the paper's methods)."""

ACT_SCALE_METHODS = ("maxabs", "percentile", "mse")
GROUP_PARAM_SOURCES = ("updated", "frozen")
TARGETS = ("paper", "vllm-w4afp8")


@dataclass(frozen=True)
class WeightSpec:
    """INT4 group quantization of a weight along its input dimension.

    group_size: input channels per group (32, 64, 128, 256, ...); -1 means one
        group per output channel (per-channel). K need not be a multiple of it:
        the last group is shorter.
    symmetric: False (default, the paper's): scale and zero point per group;
        True: zero point fixed at 8.
    scale_dtype: storage dtype of the group scales ("bfloat16", "float16",
        "float32"); solvers round to it so they see what the checkpoint holds.
    """

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    scale_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.bits == 4, f"bits={self.bits}: only 4-bit weights are supported")
        _check(
            self.group_size == -1 or self.group_size > 0,
            f"group_size={self.group_size}: use a positive number of input channels "
            "(32, 64, 128, 256) or -1 for per-channel",
        )
        _check(
            self.scale_dtype in ("bfloat16", "float16", "float32"),
            f"scale_dtype={self.scale_dtype!r}: use bfloat16, float16 or float32",
        )

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1


@dataclass(frozen=True)
class FP8Spec:
    """FP8 E4M3 arithmetic: values on the E4M3FN grid, saturated at +-fp8_max.

    fp8_max: F, 448 for E4M3FN hardware, 240 for Gaudi 2: an E4M3 value in (0, 448]
        (`check_fp8_max`). `None` means no FP8 at all (W4A16 methods).
    """

    fp8_max: float | None = FP8_E4M3FN_MAX

    def __post_init__(self) -> None:
        _check_types(self)
        if self.fp8_max is not None:
            check_fp8_max(self.fp8_max)

    @property
    def enabled(self) -> bool:
        return self.fp8_max is not None

    @property
    def protective_range(self) -> float:
        """P = F - F/15: with |x| <= P, every dequantized INT4 value stays inside +-F."""
        _check(self.enabled, "protective_range needs fp8_max")
        return float(self.fp8_max) - float(self.fp8_max) / 15.0


@dataclass(frozen=True)
class ActSpec:
    """Static per-tensor FP8 activation scales, measured on calibration data.

    method: "maxabs", "percentile" (of |x|) or "mse" (clipping search that
        minimises the FP8 round-trip error).
    percentile: used by "percentile", in (0, 100].
    pow2: round the scale up to a power of two.
    """

    method: str = "maxabs"
    percentile: float = 99.99
    pow2: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        _check(
            self.method in ACT_SCALE_METHODS,
            f"act scale method {self.method!r}: use one of {', '.join(ACT_SCALE_METHODS)}",
        )
        _check(0 < self.percentile <= 100, f"percentile={self.percentile}: must be in (0, 100]")


@dataclass(frozen=True)
class SolverSpec:
    """What a layer solver does.

    algorithm: "rtn" (round to nearest) or "gptq" (GPTQ / DPQ error feedback).
    fp8_aware: the error fed back is against the FP8 inference weight (DPQ);
        False is plain GPTQ (naive W4A8 when FP8 is on at inference).
    group_params: "updated" takes each group's scale/zero from the
        error-updated weights when the solver reaches the group (GPTQ style,
        dpq's default); "frozen" takes them from the original weights (the
        reference implementation of DPQ).
    gar: group-aware reordering; act_order: GPTQ's act-order with static
        groups. The two are exclusive.
    damp: fraction of mean(diag(H)) added to the diagonal.
    block_size: lazy-batch block of columns.

    Options beyond the paper (all off by default, so the named paper methods are unchanged;
    each keeps the checkpoint format and the kernel):
    group_search: at each group's start, search shrink factors of the group's min and max and
        the neighbouring zero points, scored by the Hessian-weighted error of the real inference
        weight s_w * fp8((q - z) * s_g) (`dpq.algorithms.group_search`). Needs group_params
        "updated".
    deployed_hessian: build H from the inputs the deployed Linear multiplies,
        s_x * fp8(x / s_x), instead of x.
    asym_alpha: weight of the asymmetric correction (GPTAQ's objective
        ||W X_float - Q X_q||): the solver's target becomes W + alpha * W dX^T X_q H^-1, with
        X_float the float model's inputs run alongside (`dpq.algorithms.gptaq`); 0 is off.
    smooth: per-channel input scales folded exactly into the operation before each set of
        Linears, chosen by a search on the set's output error (`dpq.models.smoothing`).
    token_clip: cap each calibration token's weight in H so that no token carries more than
        token_clip times the median token energy (massive activations); 0 is off.
    refine_steps: signed-gradient refinement steps per decoder layer after the solver
        (`dpq.algorithms.refine`); 0 is off.
    """

    algorithm: str = "gptq"
    fp8_aware: bool = True
    group_params: str = "updated"
    gar: bool = True
    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128
    group_search: bool = False
    deployed_hessian: bool = False
    asym_alpha: float = 0.0
    smooth: bool = False
    token_clip: float = 0.0
    refine_steps: int = 0

    @property
    def runs_float_model(self) -> bool:
        """The float model runs alongside the quantized one (`dpq.models.float_path`)."""
        return self.asym_alpha > 0 or self.smooth

    @property
    def defers_set_inputs(self) -> bool:
        """A set's statistics need all of its inputs first, so they are kept (`dpq.models.set_inputs`)."""
        return self.deployed_hessian or self.asym_alpha > 0 or self.token_clip > 0

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.algorithm in ("rtn", "gptq"), f"algorithm={self.algorithm!r}: use rtn or gptq")
        _check(0 <= self.asym_alpha <= 2, f"asym_alpha={self.asym_alpha}: use a weight in [0, 2] (0 is off)")
        _check(self.token_clip == 0 or self.token_clip >= 1,
               f"token_clip={self.token_clip}: use 0 (off) or a multiple of the median token energy >= 1")
        _check(self.refine_steps >= 0, f"refine_steps={self.refine_steps}: use 0 (off) or a positive count")
        _check(not (self.group_search and self.group_params == "frozen"),
               "group_search chooses group parameters as the solver reaches each group: "
               "use group_params='updated' with it")
        _check(
            self.group_params in GROUP_PARAM_SOURCES,
            f"group_params={self.group_params!r}: use updated or frozen",
        )
        _check(
            not (self.gar and self.act_order),
            "gar and act_order are exclusive: GAR already orders columns by the Hessian "
            "while keeping groups; turn one of them off",
        )
        _check(0 <= self.damp < 1, f"damp={self.damp}: use a fraction such as 0.01")
        _check(self.block_size > 0, f"block_size={self.block_size}: must be positive")


@dataclass(frozen=True)
class CalibSpec:
    """Calibration data: a source name or file, number of samples, tokens per sample.

    skip_first: leading positions of every calibration sequence left out of the layer
        Hessians (still run through the model and still seen by the activation-scale
        observers). Position 0 is where attention-sink models put massive activations
        that can carry most of tr(H) for a few Linears; 0 (default) keeps every token.
    holdout: draw the windows only from the first 80% of the text's tokens, so the rest can
        choose settings (`dpq.io.data.heldout_ids`; `--ppl wikitext2-heldout`) without test data.
    """

    source: str = "wikitext2"
    samples: int = 128
    seq_len: int = 2048
    seed: int = 0
    skip_first: int = 0
    holdout: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.source.strip() != "", "calib source is empty: use 'wikitext2', a .txt file or a .jsonl file")
        _check(self.samples > 0, f"calib samples={self.samples}: need at least one sample")
        _check(self.seq_len > 0, f"seq_len={self.seq_len}: must be positive")
        _check(
            0 <= self.skip_first < self.seq_len,
            f"skip_first={self.skip_first}: must be at least 0 and below seq_len={self.seq_len} "
            "(1 leaves out position 0)",
        )


@dataclass(frozen=True)
class QuantConfig:
    """Everything one quantization run needs. Build it with `QuantConfig.for_method`.

    ignore: module-name patterns left in high precision (a name component such as "down_proj", or a
        glob over full names such as "model.layers.0.*"); a single str is taken as one pattern.
    target: "paper" (the paper's numerics) or "vllm-w4afp8" (vLLM's W4AFP8 kernel: symmetric INT4,
        group size 128, F = 448; other settings are refused, see `target_problems`).
    """

    method: str = DEFAULT_METHOD
    weight: WeightSpec = field(default_factory=WeightSpec)
    fp8: FP8Spec = field(default_factory=FP8Spec)
    act: ActSpec = field(default_factory=ActSpec)
    solver: SolverSpec = field(default_factory=lambda: SolverSpec(**METHOD_OPTIONS.get(DEFAULT_METHOD, {})))
    calib: CalibSpec = field(default_factory=CalibSpec)
    ignore: tuple[str, ...] = ()
    target: str = "paper"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.method in METHODS, f"method {self.method!r}: use one of {', '.join(METHODS)}")
        _check(self.target in TARGETS, f"target {self.target!r}: use one of {', '.join(TARGETS)}")
        _check(
            self.format_version == FORMAT_VERSION,
            f"format_version={self.format_version}: this dpq reads version {FORMAT_VERSION}; "
            "upgrade dpq or re-quantize the model",
        )
        check_target(self.target, fp8_max=self.fp8.fp8_max, group_size=self.weight.group_size,
                     symmetric=self.weight.symmetric)

    @property
    def activations_fp8(self) -> bool:
        return self.fp8.enabled

    @property
    def static_activations(self) -> bool:
        """FP8 inputs with a static per-tensor scale from calibration (vllm-w4afp8: per-token at run time)."""
        return self.activations_fp8 and self.target == "paper"

    @property
    def data_free(self) -> bool:
        """Round to nearest with nothing to calibrate: no calibration pass at all."""
        return self.solver.algorithm == "rtn" and not self.static_activations

    @classmethod
    def for_method(
        cls,
        method: str = DEFAULT_METHOD,
        *,
        group_size: int = 128,
        symmetric: bool | None = None,
        fp8_max: float = FP8_E4M3FN_MAX,
        act: ActSpec | None = None,
        calib: CalibSpec | None = None,
        ignore: tuple[str, ...] | list[str] | str = (),
        group_params: str = "updated",
        damp: float = 0.01,
        act_order: bool = False,
        scale_dtype: str = "bfloat16",
        target: str = "paper",
        **options: Any,
    ) -> "QuantConfig":
        """The settings of a named method (see the method page's section 5).

        symmetric: None takes the target's own: asymmetric INT4 for "paper", symmetric for
            "vllm-w4afp8" (symmetric=False with "vllm-w4afp8" is refused, with the reason).
        ignore: module-name patterns (a single str is one pattern).
        options: SolverSpec's options beyond the paper (group_search, deployed_hessian,
        asym_alpha, smooth, token_clip, refine_steps); None or absent keeps the method's own
        (`METHOD_OPTIONS`; off for the paper's methods).
        """
        _check(isinstance(method, str) and method in METHODS, f"method {method!r}: use one of {', '.join(METHODS)}")
        if symmetric is None:
            symmetric = target == "vllm-w4afp8"
        unknown = set(options) - set(SOLVER_OPTIONS)
        _check(not unknown, f"unknown solver options {sorted(unknown)}: use {', '.join(SOLVER_OPTIONS)}")
        chosen = {**METHOD_OPTIONS.get(method, {}), **{k: v for k, v in options.items() if v is not None}}
        w4a16 = method.endswith("w4a16")
        algorithm = "rtn" if method.startswith("rtn") else "gptq"
        gar = method in GAR_METHODS
        solver = SolverSpec(
            algorithm=algorithm,
            fp8_aware=method in FP8_AWARE_METHODS,
            group_params=group_params,
            gar=gar,
            act_order=_as_bool(act_order, "act_order") and not gar,
            damp=damp,
            **chosen,
        )
        return cls(
            method=method,
            weight=WeightSpec(group_size=group_size, symmetric=symmetric, scale_dtype=scale_dtype),
            fp8=FP8Spec(fp8_max=None if w4a16 else fp8_max),
            act=ActSpec() if act is None else act,
            solver=solver,
            calib=CalibSpec() if calib is None else calib,
            ignore=ignore,
            target=target,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        """Inverse of `to_dict`; unknown keys or an unknown version are refused."""
        if not isinstance(d, dict):
            raise ConfigError("quantization_config must be a JSON object")
        version = d.get("format_version")
        _check(
            type(version) is int and version in READABLE_FORMAT_VERSIONS,
            f"quantization_config format_version={version!r}: this dpq reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}; upgrade dpq or re-quantize the model",
        )
        d = {**d, "format_version": FORMAT_VERSION}  # the settings did not change between versions
        subs = {"weight": WeightSpec, "fp8": FP8Spec, "act": ActSpec, "solver": SolverSpec, "calib": CalibSpec}
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        _check(not extra, f"quantization_config has unknown keys {sorted(extra)}")
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            if k in subs:
                sub_known = {f.name for f in dataclasses.fields(subs[k])}
                _check(isinstance(v, dict), f"quantization_config.{k} must be an object")
                bad = set(v) - sub_known
                _check(not bad, f"quantization_config.{k} has unknown keys {sorted(bad)}")
                kwargs[k] = subs[k](**v)
            else:
                kwargs[k] = v
        return cls(**kwargs)
