"""What `dpq.quantize` checks about a model before any calibration.

Pure functions of the model's architecture spec and config: the names of the Linears dpq
quantizes, ignore patterns that match none of them (a typo: named with the closest names) or all
of them, a calibration sequence longer than the model's context, a model already quantized.
"""

from __future__ import annotations

import difflib

from torch import nn

from dpq.config import ConfigError, QuantConfig
from dpq.models.specs import ArchSpec, get_submodule, is_ignored, spec_for


def quantizable_linears(spec: ArchSpec, num_layers: int) -> list[str]:
    """Full names of the Linears dpq quantizes, in order: "{spec.layers}.{i}.{name}" per layer i and spec Linear."""
    return [f"{spec.layers}.{i}.{name}" for i in range(num_layers) for name in spec.linears]


matches = is_ignored
"""The ignore rule (`dpq.models.specs.is_ignored`), which the calibration driver applies too."""


def _closest(pattern: str, names: list[str]) -> list[str]:
    """Up to three names a mistyped pattern was probably meant as: leaf names (down_proj) or full names."""
    leaves = sorted({n.rpartition(".")[2] for n in names})
    return difflib.get_close_matches(pattern, leaves + names, n=3, cutoff=0.6)


def check_ignore(patterns: tuple[str, ...], names: list[str]) -> None:
    """ConfigError if a pattern matches none of `names` (naming the closest ones) or the patterns match them all."""
    rule = "a pattern is a name component such as down_proj or a glob over full names such as model.layers.0.*"
    unmatched = [p for p in patterns if not any(matches(n, (p,)) for n in names)]
    if unmatched:
        said = []
        for p in unmatched:
            close = _closest(p, names)
            said.append(f"{p!r} (closest: {', '.join(close)})" if close else f"{p!r} (no similar name)")
        raise ConfigError(
            f"ignore pattern{'s' if len(said) > 1 else ''} {'; '.join(said)} match{'' if len(said) > 1 else 'es'} "
            f"none of the {len(names)} Linears dpq quantizes ({names[0]} ... {names[-1]}); {rule}")
    if patterns and names and all(matches(n, patterns) for n in names):
        shown = " ".join(repr(p) for p in patterns)
        raise ConfigError(
            f"ignore patterns {shown} leave all {len(names)} quantizable Linears in high precision: nothing would be "
            f"quantized. Name only the Linears to keep in float ({rule})")


def context_length(model_config) -> int | None:
    """The longest sequence the model accepts (its text config's max_position_embeddings), or None if unknown."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return getattr(text, "max_position_embeddings", None)


def check_context(model_config, seq_len: int) -> None:
    """ConfigError if calibration sequences of `seq_len` tokens are longer than the model's context."""
    ctx = context_length(model_config)
    if ctx is not None and seq_len > ctx:
        raise ConfigError(f"calibration seq_len={seq_len} is longer than the model's context ({ctx} tokens, "
                          f"max_position_embeddings): use --calib-seq-len {min(ctx, 2048)} or less")


def check_float_linears(model, names: list[str], patterns: tuple[str, ...]) -> None:
    """ConfigError if a Linear to quantize is not a float nn.Linear (the model is already quantized)."""
    from dpq.nn.linear import W4A8Linear  # noqa: PLC0415

    for name in names:
        if matches(name, patterns):
            continue
        m = get_submodule(model, name)
        if isinstance(m, W4A8Linear):
            raise ConfigError(f"the model is already quantized ({name} is a W4A8Linear): quantize the float model "
                              "it came from (load it again)")
        if not isinstance(m, nn.Linear) or not m.weight.is_floating_point():
            raise ConfigError(f"{name} is a {type(m).__name__}, not a float nn.Linear: dpq quantizes float models")


def check_model(model, config: QuantConfig, seq_len: int) -> None:
    """Everything `dpq.quantize` refuses about `model` before calibrating it (see the module doc)."""
    spec = spec_for(model.config)
    names = quantizable_linears(spec, len(get_submodule(model, spec.layers)))
    check_ignore(config.ignore, names)
    check_context(model.config, seq_len)
    check_float_linears(model, names, config.ignore)
