"""Declarative per-architecture specs: where the decoder layers are and the order of their Linears.

To add an architecture, add one `ArchSpec` to `SPECS` with the `model_type`
values of its Hugging Face config, the dotted path of its decoder-layer list,
and its Linears in execution order, grouped by the input they share.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

ATTN_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
ATTN_OUT = ("self_attn.o_proj",)
MLP_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
MLP_DOWN = ("mlp.down_proj",)
LLAMA_SEQUENCE = (ATTN_QKV, ATTN_OUT, MLP_GATE_UP, MLP_DOWN)
LLAMA_SMOOTH = (("self_attn.q_proj", "input_layernorm"), ("self_attn.o_proj", "self_attn.v_proj"),
                ("mlp.gate_proj", "post_attention_layernorm"), ("mlp.down_proj", "mlp.up_proj"))
GEMMA3_SMOOTH = (("self_attn.q_proj", "input_layernorm"), ("self_attn.o_proj", "self_attn.v_proj"),
                 ("mlp.gate_proj", "pre_feedforward_layernorm"), ("mlp.down_proj", "mlp.up_proj"))


class UnsupportedArchitecture(ValueError):
    """The model's architecture has no spec."""


@dataclass(frozen=True)
class ArchSpec:
    """One decoder architecture.

    name: a readable name; model_types: config.model_type values it covers;
    layers: dotted path from the CausalLM to its decoder-layer ModuleList;
    sequence: the layer's Linears in execution order, each inner tuple a set
    that sees the same input (quantized together, then the next set sees
    their quantized outputs).
    attention / attention_output: the attention module (called with the layer's
    keyword arguments, returning (output, weights)) and its output Linear. Once
    the Linears before `attention_output` are quantized, its input no longer
    changes, so the driver computes it once and replays it for the later
    passes over the layer. None turns that shortcut off.
    smooth_sources: (first Linear of a set, the module whose output is that set's input): an
    RMSNorm, or a Linear whose output rows feed the set channel for channel (`up_proj` for
    `down_proj`; `v_proj` for `o_proj`, one value channel shared by the query heads of its KV
    head). Per-channel input scales are folded there exactly (`dpq.models.smoothing`).
    norm_offset: the RMSNorms multiply by (norm_offset + weight): 1 for Gemma, 0 for Llama.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str = "model.layers"
    sequence: tuple[tuple[str, ...], ...] = LLAMA_SEQUENCE
    attention: str | None = "self_attn"
    attention_output: str | None = "self_attn.o_proj"
    smooth_sources: tuple[tuple[str, str], ...] = LLAMA_SMOOTH
    norm_offset: float = 0.0

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(n for group in self.sequence for n in group)


LLAMA = ArchSpec("Llama", ("llama",))
MISTRAL = ArchSpec("Mistral", ("mistral",))
QWEN2 = ArchSpec("Qwen2", ("qwen2",))
QWEN3 = ArchSpec("Qwen3", ("qwen3",))
GEMMA3_TEXT = ArchSpec("Gemma 3 (text)", ("gemma3_text",), smooth_sources=GEMMA3_SMOOTH, norm_offset=1.0)
GEMMA3 = ArchSpec("Gemma 3 (multimodal, text decoder only)", ("gemma3",), layers="model.language_model.layers",
                  smooth_sources=GEMMA3_SMOOTH, norm_offset=1.0)

SPECS: tuple[ArchSpec, ...] = (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA3_TEXT, GEMMA3)


def spec_for(config) -> ArchSpec:
    """The spec for a transformers config (by `model_type`), or an error listing what is supported."""
    model_type = getattr(config, "model_type", None)
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    supported = ", ".join(f"{s.name} ({'/'.join(s.model_types)})" for s in SPECS)
    raise UnsupportedArchitecture(
        f"model_type {model_type!r} has no dpq architecture spec. Supported: {supported}. "
        "To add one, append an ArchSpec to SPECS in src/dpq/models/specs.py naming its "
        "decoder-layer path and its Linears in execution order."
    )


def get_submodule(root, path: str):
    """`root.a.b.c` for path "a.b.c", with an error naming the missing part."""
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            raise UnsupportedArchitecture(f"{type(root).__name__} has no submodule {path!r} (missing {part!r})")
        obj = getattr(obj, part)
    return obj


def set_submodule(root, path: str, module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = get_submodule(root, parent_path) if parent_path else root
    setattr(parent, leaf, module)


def is_ignored(name: str, patterns) -> bool:
    """A module name matches one of the `--ignore` patterns: a glob on the full name, or one of its dotted
    components (so `down_proj` ignores every `...mlp.down_proj`)."""
    return any(fnmatch.fnmatchcase(name, p) or p in name.split(".") for p in patterns)
