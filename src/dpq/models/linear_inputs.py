"""Seeing the inputs of a model's Linears as it runs: the one place outside the driver that hooks a
model, for the benchmarks, the diagnostics and the test fixtures.

    with watch_model_linears(model, lambda layer, name, x: seen.append(x.shape)):
        model(input_ids=ids)

The Linears come from the architecture's spec (`dpq.models.specs.spec_for`), in execution order;
`first_of_set=True` watches one Linear per set (the Linears of a set share their input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack, contextmanager

import torch

from dpq.models.capture import decoder_base
from dpq.models.specs import ArchSpec, get_submodule, spec_for

OnInput = Callable[[int, str, torch.Tensor], None]
"""on_input(layer index, Linear name within the layer, input x as the Linear got it [..., K])."""


def flat_float(x: torch.Tensor) -> torch.Tensor:
    """A Linear input [..., K] as float32 rows [T, K], detached."""
    return x.detach().float().reshape(-1, x.shape[-1])


@contextmanager
def watch_layer_linears(layer: torch.nn.Module, names: Iterable[str], on_input: OnInput, index: int = 0):
    """Call on_input(index, name, x) with each named Linear's input while the block runs; the hooks
    are removed on exit, also after an error."""
    handles = []
    try:
        for name in names:
            def hook(_mod, args, _out, name=name):
                on_input(index, name, args[0])
            handles.append(get_submodule(layer, name).register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def watch_model_linears(model: torch.nn.Module, on_input: OnInput, layers: Iterable[int] | None = None,
                        first_of_set: bool = False, spec: ArchSpec | None = None):
    """Call on_input(layer index, name, x) for the Linears of the given decoder layers (default: all)
    while the model runs. first_of_set: one Linear per set of `spec.sequence` (its input is the set's)."""
    spec = spec or spec_for(model.config)
    blocks = get_submodule(model, spec.layers)
    names = [group[0] for group in spec.sequence] if first_of_set else list(spec.linears)
    chosen = range(len(blocks)) if layers is None else list(layers)
    with ExitStack() as stack:
        for i in chosen:
            stack.enter_context(watch_layer_linears(blocks[i], names, on_input, i))
        yield


def decoder(model: torch.nn.Module, spec: ArchSpec | None = None) -> torch.nn.Module:
    """The decoder without the LM head (model.model for Llama): running it skips the logits."""
    return decoder_base(model, spec or spec_for(model.config))
