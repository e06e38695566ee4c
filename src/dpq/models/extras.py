"""The driver's hooks for the solver options that run the float model alongside (issue 26).

`--asym-alpha` and `--smooth` need, per decoder layer, the still-float layer's inputs and outputs
on the float hidden states (`dpq.models.float_path`); `--refine` its own short calibration stream
(`dpq.models.refining`). With every option off (the paper's methods) each hook does nothing.
These streams live where the driver's other activations do (`dpq.models.activations`: memory, or
memory-mapped files under `--offload-dir`), for the current layer only; a run using them cannot
resume at a later layer.
"""

from __future__ import annotations

from dpq.models.activations import ActivationStore
from dpq.models.capture import run_layer
from dpq.models.float_path import run_float_layer


class LayerExtras:
    """Float hidden states, smoothing and refinement around `_quantize_layer`."""

    def __init__(self, model, spec, config, device, store=None) -> None:
        sol = config.solver
        self.model, self.spec, self.config, self.device = model, spec, config, device
        self.store = store if store is not None else ActivationStore()
        self.float_path = sol.runs_float_model
        self.float_hidden = None
        self.refiner = None
        self.kwargs = None

    @property
    def active(self) -> bool:
        return self.float_path or self.config.solver.refine_steps > 0

    def capture(self, calib) -> None:
        """Called while the embeddings are in memory: refinement captures its own stream."""
        if self.config.solver.refine_steps:
            from dpq.models.refining import RefineStream  # noqa: PLC0415

            self.refiner = RefineStream(self.model, self.spec, calib, self.config, self.device)

    def start(self, hidden, kwargs, start: int) -> None:
        """The first layer's inputs (the float and quantized streams start equal)."""
        if self.active and start > 0:
            raise ValueError("this run uses --asym-alpha, --smooth or --refine, whose float streams an "
                             "interrupted run does not keep: rerun with --restart")
        self.kwargs = kwargs
        if self.float_path:
            self.float_hidden = list(hidden)

    def before(self, layer, i: int, prefix: str, summary):
        """The float layer's record (asym/smooth) and refinement targets, before the layer is quantized."""
        ref = None
        if self.float_hidden is not None:
            ref = run_float_layer(layer, self.spec, self.float_hidden, self.kwargs, i, self.device,
                                  self.store.new_list, self.store.release)
            if self.config.solver.smooth:
                self._smooth(layer, ref, prefix, summary)
        if self.refiner is not None:
            self.refiner.float_targets(layer, i)
        return ref

    def after(self, layer, i: int, prefix: str, summary, layer_in, outputs, ref, new_list=list):
        """Refine the quantized layer (then redo its outputs); advance the float stream."""
        if self.refiner is not None:
            summary.refine[prefix] = self.refiner.refine(layer, i)
            outputs = run_layer(layer, layer_in, self.kwargs, i, self.device, outs=new_list())
        if ref is not None:
            self.store.release(self.float_hidden)
            for inputs in ref.inputs:
                self.store.release(inputs)
            self.float_hidden = ref.outputs
        return outputs

    def _smooth(self, layer, ref, prefix: str, summary) -> None:
        """Fold per-channel input scales into the float layer before it is quantized (`dpq.models.smoothing`)."""
        from dpq.models.smoothing import smooth_layer  # noqa: PLC0415
        from dpq.models.specs import is_ignored  # noqa: PLC0415

        ignore = self.config.ignore
        skip = [names[0] for names in self.spec.sequence if all(is_ignored(f"{prefix}.{n}", ignore) for n in names)]
        for first, rep in smooth_layer(layer, self.spec, self.model.config, ref, self.config, skip).items():
            summary.smoothing[f"{prefix}.{first}"] = rep["choice"]
