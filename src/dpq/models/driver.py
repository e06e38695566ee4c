"""The layer-by-layer calibration driver: the only code that walks a model.

For each decoder layer, for each set of Linears in the spec's order
(q/k/v, o, gate/up, down): run the layer over the calibration inputs with
hooks that accumulate each Linear's Hessian and observe its input range,
solve, swap in W4A8 modules (with their static FP8 input scale), then move
on, so every later set sees the outputs of the quantized ones before it.
Finally run the quantized layer to produce the next layer's inputs.
Calibration activations live on the CPU; one layer at a time is on `device`.

Once q/k/v are quantized the attention output Linear's input is fixed, so the
pass that calibrates it also records that input, and every later pass over the
layer replays it through the quantized output Linear instead of recomputing
attention (bit-identical; see `_ReplayedAttention`).

Streaming (`source`, `sink`): the model's parameters may sit on the meta device; the driver
asks the source to materialize the embeddings for input capture and then one decoder layer at
a time, hands each finished layer and the next layer's inputs to the sink (which writes them),
and asks the source to release the layer, so memory does not grow with the number of layers.
`resume` restarts at a later layer with the inputs and report rows an earlier run kept.
"""

from __future__ import annotations

import ctypes
import resource
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from dpq.algorithms import ERROR_ROWS, relative_output_error, relative_weight_error, solve
from dpq.algorithms.gptaq import asymmetric_correction
from dpq.config import QuantConfig
from dpq.kernels import ops
from dpq.models.activations import ActivationStore
from dpq.models.capture import Stop, capture_inputs, decoder_base, run_layer
from dpq.models.extras import LayerExtras
from dpq.models.observers import ActObserver
from dpq.models.phases import PhaseClock
from dpq.models.set_inputs import SetInputs
from dpq.models.specs import ArchSpec, get_submodule, is_ignored, set_submodule, spec_for
from dpq.models.summary import CONCENTRATED_SHARE, LinearReport, QuantSummary, concentrated
from dpq.nn.linear import W4A8Linear

__all__ = ["CONCENTRATED_SHARE", "LinearReport", "QuantSummary", "Resume", "capture_inputs", "concentrated",
           "quantize_model"]


@dataclass
class Resume:
    """Where an earlier, interrupted run stopped: the first layer still to do, its inputs, the report rows."""

    start: int
    hidden: list[torch.Tensor] | None
    rows: dict


class _ReplayedAttention(nn.Module):
    """Stands in for a layer's attention module: its output Linear applied to recorded inputs.

    inputs[b]: [b, T, K] CPU tensor, the output Linear's input for calibration batch b;
    `batch` is set before each batch is run. Returns (output, None) like HF attention modules.
    """

    def __init__(self, out_proj: nn.Module, inputs: list[torch.Tensor], device) -> None:
        super().__init__()
        self.out_proj, self.inputs, self.device, self.batch = out_proj, inputs, device, 0

    def forward(self, *args, **kwargs):
        return self.out_proj(self.inputs[self.batch].to(self.device)), None


def _quantize_group(layer, names, hidden, kwargs, index, prefix, config, device, summary, clock, replay=None,
                    record=None, ref_inputs=None, store=None):
    """Collect the Hessian and input range of one set of Linears, solve, swap in W4A8 modules.

    The spec declares that the Linears of a set see the same input, so one Hessian and one
    activation observer (fed by the first Linear's hook) serve the whole set.
    replay: the layer's `_ReplayedAttention`, if installed; record: a list that receives the
    set's input per batch (on the CPU), if given; ref_inputs: the set's input per batch in the
    float model (`dpq.models.float_path`), for the asymmetric correction; store: where the options that
    need all of the set's inputs first keep them (`dpq.models.activations`; in memory when None).
    """
    mods = {n: get_submodule(layer, n) for n in names}
    first = names[0]
    k = mods[first].in_features
    hess = SetInputs(k, f"{prefix}.{'/'.join(names)}", device, config, ref_inputs, store)
    obs = ActObserver(config.act, config.calib.seed)
    seen: set[str] = set()
    static_act = config.static_activations

    def hook(name):
        def fn(_mod, inputs, _out):
            if name == first:
                x = inputs[0].detach()
                with clock("hessian"):
                    hess.add(x)
                    if static_act:
                        obs.observe(x)
                if record is not None:
                    record.append(x.cpu())
            seen.add(name)
            if seen == set(names):
                seen.clear()
                raise Stop

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    try:
        with clock("forward"):
            run_layer(layer, hidden, kwargs, index, device, stop_ok=True, replay=replay)
    finally:
        for h in handles:
            h.remove()
    s_x = obs.scale(config.fp8.fp8_max) if static_act else None
    with clock("hessian"):
        x, h, cross, share = hess.finish(s_x, need_h=config.solver.algorithm != "rtn")
    with clock("solve"):  # GPTAQ: one factorization of H for the whole set
        correct = None if cross is None else asymmetric_correction(h, cross, config.solver.asym_alpha,
                                                                   config.solver.damp)
    for n, m in mods.items():
        full = f"{prefix}.{n}"
        w = m.weight.detach().to(device=device, dtype=torch.float32)
        with clock("solve"):
            qw = solve(w if correct is None else correct(w), h, config, name=full)
            bias = None if m.bias is None else m.bias.detach()
            q = W4A8Linear.from_quantized(qw, bias, config.weight.scale_dtype, config.target)
            if s_x is not None:
                q.set_input_scale(s_x)
            set_submodule(layer, n, q.to(device))
        with clock("error"):
            err = relative_output_error(w, qw, x if x is not None else h, rows=ERROR_ROWS)
        summary.linears.append(LinearReport(full, tuple(w.shape), err, qw.solve_seconds, s_x, share))


def _quantize_layer(layer, spec: ArchSpec, hidden, kwargs, i, prefix, config, device, summary, clock, store,
                    replay_attention: bool = True, ref=None):
    """Quantize one decoder layer's Linears set by set; returns its outputs (the next layer's inputs).

    The reference path's float32 weight cache is off meanwhile: the quantized Linears that run in the
    later passes keep only their FP8 weights (1 byte per weight instead of 5), same outputs.
    ref: the layer's `FloatLayerRecord` (float model run alongside), or None.
    """
    with ops.float_cache("off"):
        return _quantize_layer_sets(layer, spec, hidden, kwargs, i, prefix, config, device, summary, clock, store,
                                    replay_attention, ref)


def _quantize_layer_sets(layer, spec, hidden, kwargs, i, prefix, config, device, summary, clock, store,
                         replay_attention, ref):
    replay, attention = None, None
    try:
        for j, names in enumerate(spec.sequence):
            todo = [n for n in names if not is_ignored(f"{prefix}.{n}", config.ignore)]
            summary.skipped += [f"{prefix}.{n}" for n in names if n not in todo]
            if not todo:
                continue
            wanted = replay_attention and replay is None and spec.attention and todo == [spec.attention_output]
            record = store.new_list() if wanted else None
            _quantize_group(layer, todo, hidden, kwargs, i, prefix, config, device, summary, clock, replay, record,
                            None if ref is None else ref.inputs[j], store)
            if record is not None and len(record) == len(hidden):
                attention = get_submodule(layer, spec.attention)
                replay = _ReplayedAttention(get_submodule(layer, spec.attention_output), record, device)
                set_submodule(layer, spec.attention, replay)
        with clock("forward"):
            return run_layer(layer, hidden, kwargs, i, device, replay=replay, outs=store.new_list())
    finally:
        if attention is not None:
            set_submodule(layer, spec.attention, attention)
        if replay is not None:
            store.release(replay.inputs)


def quantize_model(
    model, calib: torch.Tensor, config: QuantConfig, device: str | torch.device = "cpu",
    batch_size: int = 8, progress: bool = True, replay_attention: bool = True, *,
    source=None, sink=None, resume: Resume | None = None, clock: PhaseClock | None = None,
    store: ActivationStore | None = None,
) -> QuantSummary:
    """Quantize every decoder Linear of `model` in place; returns the run's summary.

    calib: [S, T] token ids (see dpq.io.data.calibration_batches).
    replay_attention: replay the recorded attention outputs in the passes after the attention
        output Linear (see the module doc); False recomputes attention every pass (same result).
    source: materialize(prefix) / release(prefix) of submodules whose weights are not in memory
        (dpq.models.source); None: the model is fully in memory.
    sink: layer_done(index, prefix, layer, next_inputs, summary), called after each layer (the
        checkpoint writer); with a source, each layer is released once the sink has it.
    resume: start at `resume.start` with the inputs and report rows an earlier run kept.
    store: where calibration activations live (dpq.models.activations); default: in memory.
    """
    if calib.dim() != 2 or calib.numel() == 0:
        raise ValueError(f"calibration ids must be a non-empty [samples, tokens] tensor, got {tuple(calib.shape)}")
    if config.calib.skip_first >= calib.shape[1]:
        raise ValueError(f"skip_first={config.calib.skip_first} leaves none of the {calib.shape[1]} tokens per "
                         "calibration sequence for the Hessians: lower it or use longer sequences")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    spec = spec_for(model.config)
    clock = clock or PhaseClock()
    store = store or ActivationStore()
    t0 = time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if source is None:
        model.to("cpu")
    layers = get_submodule(model, spec.layers)
    summary = QuantSummary(config.method, calib_tokens=calib.numel(), layers=len(layers))
    start = 0
    if resume is not None:
        summary.restore_rows(resume.rows)
        start = summary.resumed_at = resume.start
    if config.data_free:
        _quantize_data_free(layers, spec, config, device, summary, progress, clock, source, sink, start)
        return _finish(summary, t0, device, clock)
    extras = LayerExtras(model, spec, config, device, store)
    hidden, kwargs = _capture(model, spec, calib, batch_size, device, clock, source, sink is not None, store, extras)
    extras.start(hidden, kwargs, start)
    if resume is not None and start > 0:
        store.release(hidden)
        hidden = resume.hidden
    for i in _progress(range(start, len(layers)), config, progress, start, len(layers)):
        prefix = f"{spec.layers}.{i}"
        layer = _load_layer(layers, i, prefix, device, clock, source)
        ref = extras.before(layer, i, prefix, summary)
        outputs = _quantize_layer(layer, spec, hidden, kwargs, i, prefix, config, device, summary, clock, store,
                                  replay_attention, ref)
        outputs = extras.after(layer, i, prefix, summary, hidden, outputs, ref, store.new_list)
        store.release(hidden)
        hidden = outputs
        layers[i] = layer.to("cpu")
        _layer_done(i, prefix, layers[i], hidden, summary, clock, source, sink)
    return _finish(summary, t0, device, clock)


def _capture(model, spec, calib, batch_size, device, clock, source, release: bool, store, extras):
    """capture_inputs, with the decoder's non-layer modules (embeddings, norms, rotary tables) materialized
    first and, when layers are streamed to a sink, released afterwards."""
    base = decoder_base(model, spec)
    prefix = spec.layers.rpartition(".")[0]
    around = [f"{prefix}.{n}" for n, m in base.named_children() if not isinstance(m, nn.ModuleList)]
    if source is not None:
        with clock("load"):
            for p in around:
                source.materialize(p)
    with clock("forward"):
        hidden, kwargs = capture_inputs(model, spec, calib, batch_size, device, store.new_list)
        extras.capture(calib)  # refinement's own short stream, while the embeddings are in memory
    if source is not None and release:
        for p in around:
            source.release(p)
    return hidden, kwargs


def _progress(indices, config, progress: bool, start: int, total: int):
    desc = f"dpq {config.method}" + (f" (resumed at layer {start}/{total})" if start else "")
    return tqdm(indices, desc=desc, unit="layer", disable=not progress, initial=start, total=total)


def _load_layer(layers, i, prefix, device, clock, source):
    if source is not None:
        with clock("load"):
            source.materialize(prefix)
    return layers[i].to(device)


def _layer_done(i, prefix, layer, hidden, summary, clock, source, sink) -> None:
    if sink is None:
        return
    with clock("save"):
        sink.layer_done(i, prefix, layer, hidden, summary)
    if source is not None:
        source.release(prefix)
        return_freed_memory()


def return_freed_memory() -> None:
    """Give the memory freed with a released layer back to the OS (glibc keeps freed blocks in its heaps,
    so without this the process's resident size creeps up layer after layer); no-op elsewhere."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _quantize_data_free(layers, spec: ArchSpec, config: QuantConfig, device, summary, progress, clock,
                        source=None, sink=None, start: int = 0) -> None:
    """Round-to-nearest weights with no activation scales need no calibration pass.

    The reported error is then the weight error ||W - W_q|| / ||W|| (the output error for
    white inputs, H = I), since no inputs were seen.
    """
    for i in _progress(range(start, len(layers)), config, progress, start, len(layers)):
        prefix = f"{spec.layers}.{i}"
        if source is not None:
            with clock("load"):
                source.materialize(prefix)
        for name in spec.linears:
            if is_ignored(f"{prefix}.{name}", config.ignore):
                summary.skipped.append(f"{prefix}.{name}")
                continue
            m = get_submodule(layers[i], name)
            w = m.weight.detach().to(device=device, dtype=torch.float32)
            with clock("solve"):
                qw = solve(w, None, config, name=f"{prefix}.{name}")
                bias = None if m.bias is None else m.bias.detach()
                q = W4A8Linear.from_quantized(qw, bias, config.weight.scale_dtype, config.target)
                set_submodule(layers[i], name, q.to("cpu"))
            with clock("error"):
                err = relative_weight_error(w, qw, rows=ERROR_ROWS)
            summary.linears.append(LinearReport(f"{prefix}.{name}", tuple(w.shape), err, qw.solve_seconds, None))
        _layer_done(i, prefix, layers[i], None, summary, clock, source, sink)
    summary.data_free = True


def _finish(summary: QuantSummary, t0: float, device, clock: PhaseClock) -> QuantSummary:
    summary.seconds = time.time() - t0
    summary.phases = clock.as_dict()
    summary.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        summary.peak_device_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return summary
