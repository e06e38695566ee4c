"""The float model run alongside the quantized one, one decoder layer at a time.

Options that compare against the float model (the asymmetric correction, smoothing, block
refinement) need, per decoder layer, the float layer's outputs on the float hidden states (the
next float hidden states, and refinement's target) and the inputs every set of Linears sees in
the float model. `run_float_layer` gets both in one pass of the still-float layer, before the
driver quantizes it; the driver carries the float hidden states from layer to layer next to the
quantized ones (one more [samples, T, hidden] copy on the CPU).

Those records hold every set's inputs for every calibration token (sum of the sets' K floats a
token); `new_list` puts them where the driver keeps its other activations, so `--offload-dir`
memory-maps them too (`dpq.models.activations`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dpq.models.capture import run_layer
from dpq.models.linear_inputs import watch_layer_linears
from dpq.models.specs import ArchSpec


def _keep(_lst) -> None:
    """The default `release`: plain lists need no freeing."""


@dataclass
class FloatLayerRecord:
    """outputs[b]: [b, T, H] float layer output of batch b (CPU); inputs[j][b]: [b, T, K_j] input of
    the j-th set of spec.sequence in the float model (CPU)."""

    outputs: list[torch.Tensor]
    inputs: list[list[torch.Tensor]]
    new_list: Callable[[], Any] = list
    release: Callable[[Any], None] = _keep

    def scale_inputs(self, j: int, s: torch.Tensor) -> None:
        """Divide set j's recorded inputs by per-channel scales s [K_j] (after smoothing folded them); the
        rescaled copies go where the originals were (memory-mapped under --offload-dir), the originals are freed."""
        scaled = self.new_list()
        for x in self.inputs[j]:
            scaled.append(x / s.to(x.dtype))
        self.release(self.inputs[j])
        self.inputs[j] = scaled


def run_float_layer(layer, spec: ArchSpec, hidden: list[torch.Tensor], kwargs, index: int, device,
                    new_list=list, release=_keep) -> FloatLayerRecord:
    """Run the (still float) decoder layer over the float hidden states, recording every set's input.

    new_list: makes the lists the record's tensors go to (`ActivationStore.new_list`; plain lists by default);
    release: frees such a list (`ActivationStore.release`), for inputs the record replaces.
    """
    firsts = [names[0] for names in spec.sequence]
    inputs: list[list[torch.Tensor]] = [new_list() for _ in firsts]
    with watch_layer_linears(layer, firsts, lambda _i, name, x: inputs[firsts.index(name)].append(x.detach().cpu())):
        outs = run_layer(layer, hidden, kwargs, index, device, outs=new_list())
    return FloatLayerRecord(outs, inputs, new_list, release)
