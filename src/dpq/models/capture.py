"""Running decoder layers on calibration batches: layer 0's inputs, each layer's keyword arguments,
and one layer's outputs, with the early stop the driver's hooks use."""

from __future__ import annotations

import torch
from torch import nn

from dpq.models.specs import ArchSpec, get_submodule


class Stop(Exception):
    """Raised inside a forward to end it early once the needed inputs are seen."""


class _LayerRecorder(nn.Module):
    """Stands in for decoder layer i during input capture: records its kwargs (and layer 0's input)."""

    def __init__(self, index: int, last: bool, sink: dict) -> None:
        super().__init__()
        self.index, self.last, self.sink = index, last, sink

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.sink["hidden"].append(to_host(hidden_states))
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        kwargs["use_cache"] = False
        self.sink["kwargs"][-1][self.index] = kwargs
        if self.last:
            raise Stop
        return hidden_states


def to_host(y: torch.Tensor) -> torch.Tensor:
    """A layer's output moved to the CPU; in pinned memory when it comes from a GPU, so that the next
    layer's pass streams it back with an asynchronous copy."""
    y = y.detach()
    if y.device.type != "cuda":
        return y.cpu()
    out = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
    return out.copy_(y)


def to_device(obj, device):
    """Tensors inside nested tuples, lists and dicts moved to `device`."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def decoder_base(model, spec: ArchSpec):
    """The module holding the decoder-layer list (model.model for Llama)."""
    return get_submodule(model, spec.layers.rpartition(".")[0])


def capture_inputs(model, spec: ArchSpec, calib: torch.Tensor, batch_size: int, device: torch.device,
                   new_list=list):
    """Inputs of decoder layer 0 and the keyword arguments each layer receives.

    calib: [S, T] token ids. Returns (hidden, kwargs): hidden is a list of
    [b, T, H] CPU tensors (one per batch), kwargs[b][i] the kwargs of layer i
    for batch b (masks and position embeddings differ per layer in Gemma 3).
    No decoder layer runs: each is replaced by a recorder, so their weights may be on the meta device.
    new_list() makes the container of `hidden` (dpq.models.activations).
    """
    layers = get_submodule(model, spec.layers)
    base = decoder_base(model, spec)
    originals = list(layers)
    sink: dict = {"hidden": new_list(), "kwargs": []}
    for i in range(len(layers)):
        layers[i] = _LayerRecorder(i, i == len(originals) - 1, sink)
    moved = [m for m in base.children() if not isinstance(m, nn.ModuleList)]
    try:
        for m in moved:
            m.to(device)
        with torch.no_grad():
            for start in range(0, calib.shape[0], batch_size):
                sink["kwargs"].append({})
                try:
                    base(input_ids=calib[start : start + batch_size].to(device), use_cache=False)
                except Stop:
                    pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        if device.type != "cpu":
            for m in moved:
                m.to("cpu")
    kwargs = [{i: to_device(kw, "cpu") for i, kw in per_batch.items()} for per_batch in sink["kwargs"]]
    return sink["hidden"], kwargs


def run_layer(layer, hidden, kwargs, index, device, stop_ok=False, replay=None, outs=None):
    """The layer's outputs on every batch: CPU tensors appended to `outs` (a new list by default; batches
    a hook stopped are skipped when stop_ok). replay: a `_ReplayedAttention` whose `batch` is set first."""
    outs = [] if outs is None else outs
    with torch.no_grad():
        for b, x in enumerate(hidden):
            if replay is not None:
                replay.batch = b
            try:
                y = layer(x.to(device, non_blocking=x.is_pinned()), **to_device(kwargs[b][index], device))
            except Stop:
                if not stop_ok:
                    raise
                continue
            y = y[0] if isinstance(y, tuple) else y
            outs.append(to_host(y))
    return outs
