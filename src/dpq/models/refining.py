"""The driver's side of `--refine`: its own short calibration stream, float targets, write-back.

Refinement (`dpq.algorithms.refine`) trains on a few thousand tokens: the first REFINE_SEQS
calibration sequences cut to their first REFINE_LEN tokens, one sequence per step. They get their
own pair of hidden-state streams carried from layer to layer (the quantized model's and the float
model's, [1, REFINE_LEN, H] each per sequence) and their own per-layer keyword arguments (masks
and position embeddings for that length), captured once at the start. Per decoder layer:
`targets` runs the still-float layer on the float stream (before the driver quantizes it);
`refine` trains the quantized layer against those targets, then advances both streams.
"""

from __future__ import annotations

import torch

from dpq.algorithms.refine import refine_quantized_layer
from dpq.models.specs import ArchSpec
from dpq.nn.linear import W4A8Linear

REFINE_SEQS = 8
"""Calibration sequences used by refinement."""
REFINE_LEN = 512
"""Tokens of each (the first ones): 8 x 512 = 4096 tokens."""


class RefineStream:
    def __init__(self, model, spec: ArchSpec, calib: torch.Tensor, config, device) -> None:
        from dpq.models.capture import capture_inputs  # noqa: PLC0415

        ids = calib[:REFINE_SEQS, : min(REFINE_LEN, calib.shape[1])]
        self.hidden_q, self.kwargs = capture_inputs(model, spec, ids, 1, device)  # one sequence per batch
        self.hidden_f = list(self.hidden_q)
        self.targets: list[torch.Tensor] | None = None
        self.config, self.device = config, device

    def _run(self, layer, x, kw):
        from dpq.models.capture import to_device as _to  # noqa: PLC0415

        y = layer(x.to(self.device), **_to(kw, self.device))
        return y[0] if isinstance(y, tuple) else y

    def float_targets(self, layer, index: int) -> None:
        """The float layer's outputs on the float stream (call before quantizing the layer)."""
        with torch.no_grad():
            self.targets = [self._run(layer, x, self.kwargs[b][index]).cpu() for b, x in enumerate(self.hidden_f)]

    def refine(self, layer, index: int) -> dict:
        """Train the quantized layer against the targets; advance both streams."""
        names = [n for n, m in layer.named_modules() if isinstance(m, W4A8Linear) and m.input_scale is not None]
        kw = [self.kwargs[b][index] for b in range(len(self.hidden_q))]
        dev = [x.to(self.device) for x in self.hidden_q]
        tgt = [y.to(self.device) for y in self.targets]
        report = {"steps": 0, "kept": False}
        if names:
            report = refine_quantized_layer(layer, names, dev, tgt, kw, self._run, self.config.solver.refine_steps,
                                            seed=self.config.calib.seed + index)
        with torch.no_grad():
            self.hidden_q = [self._run(layer, x, k).cpu() for x, k in zip(dev, kw)]
        self.hidden_f, self.targets = self.targets, None
        return report
