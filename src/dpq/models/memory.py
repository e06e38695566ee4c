"""How much memory a run's calibration activations take, checked before calibrating.

The driver keeps, per decoder layer, the layer's inputs and outputs for every calibration token
([tokens, hidden] each) and the attention output Linear's recorded inputs. The options that run
the float model alongside (`asym_alpha`, `smooth`) add the float hidden states (two more
[tokens, hidden]) and every set's float inputs (the sum of the sets' K per token); the options
that need a set's inputs before its statistics (`deployed_hessian`, `asym_alpha`, `token_clip`)
keep the set's own inputs (the largest K per token). `--offload-dir` moves all of these to
memory-mapped files (`dpq.models.activations`).
"""

from __future__ import annotations

from dpq.config import ConfigError, QuantConfig
from dpq.models.specs import ArchSpec, get_submodule

GIB = 2**30


def set_widths(layer, spec: ArchSpec) -> list[int]:
    """K of every set of Linears in `spec.sequence`, read from one decoder layer (weights may be on "meta")."""
    return [get_submodule(layer, names[0]).in_features for names in spec.sequence]


def activation_bytes(hidden: int, widths: list[int], attn_width: int, tokens: int, itemsize: int,
                     config: QuantConfig) -> int:
    """Bytes of calibration activations held at once for one layer (see the module doc).

    hidden: the model's hidden size; widths: `set_widths`; attn_width: K of the attention output
    Linear (0 if none); tokens: calibration tokens; itemsize: bytes per activation element.
    """
    sol = config.solver
    if config.data_free:
        return 0  # no calibration pass
    per_token = 2 * hidden + attn_width
    if sol.runs_float_model:
        per_token += 2 * hidden + sum(widths)
    if sol.defers_set_inputs:
        per_token += max(widths)
    return per_token * tokens * itemsize


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_activation_memory(needed: int, available: int | None, tokens: int, offload_dir) -> None:
    """ConfigError, before calibrating, when the activations kept in memory cannot fit in the RAM available."""
    if offload_dir is not None or available is None or needed <= available:
        return
    raise ConfigError(
        f"calibration would keep about {needed / GIB:.1f} GiB of activations in memory ({tokens} tokens) and "
        f"{available / GIB:.1f} GiB is available: pass --offload-dir DIR (memory-mapped files on disk; "
        "dpq.quantize_to_disk(..., offload_dir=DIR)) or use fewer --calib-samples / a shorter --calib-seq-len")


def check_run_memory(model, itemsize: int, config: QuantConfig, tokens: int, offload_dir=None) -> None:
    """`check_activation_memory` for one run: `model`'s architecture (weights may be on "meta"), activations
    of `itemsize` bytes, `tokens` calibration tokens."""
    from dpq.models.specs import spec_for  # noqa: PLC0415

    spec = spec_for(model.config)
    layer = get_submodule(model, spec.layers)[0]
    attn = get_submodule(layer, spec.attention_output).in_features if spec.attention_output else 0
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    needed = activation_bytes(text.hidden_size, set_widths(layer, spec), attn, tokens, itemsize, config)
    check_activation_memory(needed, available_bytes(), tokens, offload_dir)
