"""Variants of one W4A8 checkpoint, each changing one thing, to locate where it loses accuracy
(benchmarks/diagnose.py evaluates them; docs/results/diagnose.md has the study).

A variant is typed (`Variant`) and spelled on the command line as:

  float          the source model
  w4a8           the checkpoint as saved (INT4 -> FP8 weights, FP8 activations)
  weights-only   the checkpoint's weights (W4A8Linear.effective_weight), activations left in float
  acts-only      the float weights, activations quantized to FP8 as the checkpoint does: with its
                 static s_x (target paper) or per token (target vllm-w4afp8)
  float-acts:K   the checkpoint with float activations into the Linears of kind K only
                 (K = qkv, o, gate_up, down)
  float:A+B      the checkpoint with the Linears of these full names put back to the float model's
  float-layers:N the checkpoint with every Linear of decoder layer N (or layers N-M) put back to float
  float-kind:K   the checkpoint with the Linears of kind K put back to float in every layer
  each-layer     shorthand for float-layers:0, float-layers:1, ... (one per decoder layer)
  each-kind      shorthand for float-kind:qkv, float-kind:o, float-kind:gate_up, float-kind:down
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from dpq.models.specs import get_submodule, spec_for
from dpq.nn.linear import W4A8Linear
from dpq.numerics.fp8 import quantize_activation
from dpq.numerics.vllm_w4afp8 import quantize_per_token

KINDS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
         "down": ("down_proj",)}
SIMPLE = ("float", "w4a8", "weights-only", "acts-only")
SHORTHANDS = ("each-layer", "each-kind")
VARIANTS = SIMPLE + tuple(f"float-acts:{k}" for k in KINDS)
"""The default set (`--variants all`)."""


@dataclass(frozen=True)
class Variant:
    """kind: one of SIMPLE, "float-acts", "float-kind" (arg: a KINDS key), "float-layers" (layers:
    an inclusive (first, last) range), "float-names" (names: full Linear names)."""

    kind: str
    arg: str | None = None
    layers: tuple[int, int] | None = None
    names: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind in SIMPLE:
            return self.kind
        if self.kind == "float-layers":
            lo, hi = self.layers
            return f"float-layers:{lo}" if lo == hi else f"float-layers:{lo}-{hi}"
        if self.kind == "float-names":
            return "float:" + "+".join(self.names)
        return f"{self.kind}:{self.arg}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """The variant a command-line name spells; ValueError naming the fix otherwise (not the shorthands)."""
        if text in SIMPLE:
            return cls(text)
        head, sep, body = text.partition(":")
        if sep and head == "float" and body:
            return cls("float-names", names=tuple(body.split("+")))
        if sep and head == "float-layers":
            return cls("float-layers", layers=_layer_range(body))
        if sep and head in ("float-kind", "float-acts"):
            if body not in KINDS:
                raise ValueError(f"{text}: unknown kind, use one of {', '.join(KINDS)}")
            return cls(head, arg=body)
        raise ValueError(f"unknown variant(s) {text}: use {', '.join(VARIANTS + SHORTHANDS)}, "
                         "float-layers:N[-M], float-kind:K or float:NAME+NAME")


def _layer_range(text: str) -> tuple[int, int]:
    """'5' -> (5, 5), '0-5' -> (0, 5); ValueError naming the problem otherwise."""
    lo, sep, hi = text.partition("-")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        raise ValueError(f"float-layers:{text}: give a layer index N or a range N-M, e.g. float-layers:0-5")
    lo_i, hi_i = int(lo), int(hi) if sep else int(lo)
    if hi_i < lo_i:
        raise ValueError(f"float-layers:{text}: the range is empty (write the lower index first)")
    return lo_i, hi_i


def check_name(text: str) -> None:
    """Raise ValueError, with the fix, for a name that is neither a variant nor a shorthand."""
    if text not in SHORTHANDS:
        Variant.parse(text)


def expand(names, n_layers: int) -> list[Variant]:
    """Typed variants for command-line names, shorthands spelled out; layers checked against n_layers."""
    out = []
    for text in names:
        if text == "each-layer":
            out += [Variant("float-layers", layers=(i, i)) for i in range(n_layers)]
        elif text == "each-kind":
            out += [Variant("float-kind", arg=k) for k in KINDS]
        else:
            v = Variant.parse(text)
            if v.kind == "float-layers" and v.layers[1] >= n_layers:
                raise ValueError(f"{v}: the model has {n_layers} decoder layers (0 to {n_layers - 1})")
            out.append(v)
    return out


class _FloatActs(nn.Module):
    """A W4A8Linear run with its weight in real units (`effective_weight`, any target) but unquantized activations."""

    def __init__(self, lin: W4A8Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x):
        w = self.lin.effective_weight()
        y = x.float() @ w.t()
        if self.lin.bias is not None:
            y = y + self.lin.bias.float()
        return y.to(x.dtype)


class _FP8Acts(nn.Module):
    """A float Linear whose input is first quantized to FP8: with a static scale s_x, or per token (s_x None)."""

    def __init__(self, lin: nn.Linear, s_x: float | None, fp8_max: float) -> None:
        super().__init__()
        self.lin, self.s_x, self.fp8_max = lin, s_x, fp8_max

    def forward(self, x):
        if self.s_x is None:  # vLLM's dynamic per-token FP8 (target vllm-w4afp8)
            x8, a = quantize_per_token(x.reshape(-1, x.shape[-1]))
            return self.lin((x8 * a.unsqueeze(1)).reshape(x.shape).to(x.dtype))
        return self.lin((quantize_activation(x, self.s_x, self.fp8_max) * self.s_x).to(x.dtype))


def _linears(model):
    spec = spec_for(model.config)
    for i, layer in enumerate(get_submodule(model, spec.layers)):
        for name in spec.linears:
            yield i, layer, name


def _swap(layer, name, module):
    parent, _, leaf = name.rpartition(".")
    setattr(get_submodule(layer, parent) if parent else layer, leaf, module)


def _with_float(quantized, float_model, names):
    """A copy of `quantized` whose modules of these full names are copies of float_model's."""
    m = copy.deepcopy(quantized)
    for full in names:
        parent, _, leaf = full.rpartition(".")
        setattr(get_submodule(m, parent), leaf, copy.deepcopy(get_submodule(float_model, full)))
    return m


def build(variant: Variant, quantized, float_model):
    """The model of one variant (a modified copy; the inputs are left untouched)."""
    if variant.kind == "float":
        return float_model
    if variant.kind == "w4a8":
        return quantized
    if variant.kind == "acts-only":
        return _acts_only(quantized, float_model)
    if variant.kind == "float-names":
        return _with_float(quantized, float_model, variant.names)
    if variant.kind in ("float-layers", "float-kind"):
        if variant.kind == "float-layers":
            lo, hi = variant.layers
            keep = lambda i, leaf: lo <= i <= hi  # noqa: E731
        else:
            keep = lambda i, leaf: leaf in KINDS[variant.arg]  # noqa: E731
        layers = spec_for(quantized.config).layers
        names = [f"{layers}.{i}.{name}" for i, _, name in _linears(quantized) if keep(i, name.rpartition(".")[2])]
        return _with_float(quantized, float_model, names)
    kinds = tuple(KINDS) if variant.kind == "weights-only" else (variant.arg,)
    leaves = {leaf for k in kinds for leaf in KINDS[k]}
    m = copy.deepcopy(quantized)
    for _i, layer, name in _linears(m):
        q = get_submodule(layer, name)
        if name.rpartition(".")[2] in leaves and isinstance(q, W4A8Linear) and q.is_w4a8:
            _swap(layer, name, _FloatActs(q))
    return m


def _acts_only(quantized, float_model):
    m = copy.deepcopy(float_model)
    for (_i, layer, name), (_, qlayer, _) in zip(_linears(m), _linears(quantized)):
        q = get_submodule(qlayer, name)
        if isinstance(q, W4A8Linear) and q.is_w4a8:
            s_x = None if q.dynamic_act else float(q.input_scale)
            _swap(layer, name, _FP8Acts(get_submodule(layer, name), s_x, q.fp8_max))
    return m
