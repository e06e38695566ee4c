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
"""

from __future__ import annotations

import fnmatch
import resource
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from dpq.algorithms import relative_output_error, solve
from dpq.algorithms.gptaq import asymmetric_target
from dpq.config import QuantConfig
from dpq.models.float_path import run_float_layer
from dpq.models.observers import ActObserver
from dpq.models.set_inputs import SetInputs
from dpq.models.set_inputs import hessian_tokens as _hessian_tokens  # noqa: F401 - moved there
from dpq.models.specs import ArchSpec, get_submodule, set_submodule, spec_for
from dpq.nn.linear import W4A8Linear


CONCENTRATED_SHARE = 0.25
"""A Linear whose top 0.1% of calibration tokens carry more than this share of tr(H) is flagged:
its Hessian is set by a few tokens (massive activations, e.g. at position 0). Over 8 x 2048
WikiText-2 tokens SmolLM2-135M's layers 11 and 28 `down_proj` carry 99% and 51%, its next
input 19%; over 8 x 512 no Gemma-3-270M input carries over 2%
(`benchmarks/activation_outliers.py`)."""


class _Stop(Exception):
    """Raised inside a forward to end it early once the needed inputs are seen."""


@dataclass
class LinearReport:
    name: str
    shape: tuple[int, int]
    rel_error: float
    solve_seconds: float
    input_scale: float | None
    top_token_share: float | None = None  # of tr(H), top 0.1% of tokens; None without calibration


@dataclass
class QuantSummary:
    """What a quantization run did: one row per quantized Linear, totals and memory."""

    method: str
    linears: list[LinearReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_device_mb: float | None = None
    calib_tokens: int = 0
    data_free: bool = False  # no calibration pass (RTN weights, no static activation scales)
    smoothing: dict = field(default_factory=dict)  # {first Linear of a set: chosen scales}, with smooth on
    refine: dict = field(default_factory=dict)  # {decoder layer: {"loss_before", "loss_after", "seconds"}}

    @property
    def mean_rel_error(self) -> float:
        errs = [r.rel_error for r in self.linears]
        return sum(errs) / len(errs) if errs else float("nan")

    def concentrated(self, threshold: float = CONCENTRATED_SHARE) -> list[LinearReport]:
        """The Linears whose Hessian the top 0.1% of calibration tokens dominate (`concentrated`'s rule)."""
        shares = {r.name: r.top_token_share for r in self.linears if r.top_token_share is not None}
        flagged = concentrated(shares, threshold)
        return [r for r in self.linears if r.name in flagged]

    def top_token_shares(self) -> dict[str, float]:
        """{Linear name: top-0.1%-token share of tr(H)} for every calibrated Linear (stored in checkpoints)."""
        return {r.name: round(r.top_token_share, 4) for r in self.linears if r.top_token_share is not None}


def concentrated(shares: dict[str, float] | None, threshold: float = CONCENTRATED_SHARE) -> dict[str, float]:
    """The entries of a {Linear name: top-token share} map above `threshold` (`QuantSummary.concentrated`'s rule)."""
    return {name: share for name, share in (shares or {}).items() if share > threshold}


class _LayerRecorder(nn.Module):
    """Stands in for decoder layer i during input capture: records its kwargs (and layer 0's input)."""

    def __init__(self, index: int, last: bool, sink: dict) -> None:
        super().__init__()
        self.index, self.last, self.sink = index, last, sink

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.sink["hidden"].append(hidden_states.detach().cpu())
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        kwargs["use_cache"] = False
        self.sink["kwargs"][-1][self.index] = kwargs
        if self.last:
            raise _Stop
        return hidden_states


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


def _to(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def capture_inputs(model, spec: ArchSpec, calib: torch.Tensor, batch_size: int, device: torch.device):
    """Inputs of decoder layer 0 and the keyword arguments each layer receives.

    calib: [S, T] token ids. Returns (hidden, kwargs): hidden is a list of
    [b, T, H] CPU tensors (one per batch), kwargs[b][i] the kwargs of layer i
    for batch b (masks and position embeddings differ per layer in Gemma 3).
    """
    layers = get_submodule(model, spec.layers)
    base = get_submodule(model, spec.layers.rpartition(".")[0])
    originals = list(layers)
    sink: dict = {"hidden": [], "kwargs": []}
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
                except _Stop:
                    pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        for m in moved:
            m.to("cpu")
    kwargs = [{i: _to(kw, "cpu") for i, kw in per_batch.items()} for per_batch in sink["kwargs"]]
    return sink["hidden"], kwargs


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or p in name.split(".") for p in patterns)


def _run_layer(layer, hidden, kwargs, index, device, stop_ok=False, replay=None):
    outs = []
    with torch.no_grad():
        for b, x in enumerate(hidden):
            if replay is not None:
                replay.batch = b
            try:
                y = layer(x.to(device), **_to(kwargs[b][index], device))
            except _Stop:
                if not stop_ok:
                    raise
                continue
            y = y[0] if isinstance(y, tuple) else y
            outs.append(y.detach().cpu())
    return outs


def _quantize_group(layer, names, hidden, kwargs, index, prefix, config, device, summary, replay=None,
                    record=None, ref_inputs=None):
    """Collect the Hessian and input range of one set of Linears, solve, swap in W4A8 modules.

    The spec declares that the Linears of a set see the same input, so one Hessian and one
    activation observer (fed by the first Linear's hook) serve the whole set.
    replay: the layer's `_ReplayedAttention`, if installed; record: a list that receives the
    set's input per batch (on the CPU), if given; ref_inputs: the set's input per batch in the
    float model (`dpq.models.float_path`), for the asymmetric correction.
    """
    mods = {n: get_submodule(layer, n) for n in names}
    first = names[0]
    k = mods[first].in_features
    hess = SetInputs(k, f"{prefix}.{'/'.join(names)}", device, config, ref_inputs)
    obs = ActObserver(config.act, config.calib.seed)
    seen: set[str] = set()
    static_act = config.activations_fp8 and config.target == "paper"  # vllm-w4afp8: per-token at run time

    def hook(name):
        def fn(_mod, inputs, _out):
            if name == first:
                x = inputs[0].detach()
                hess.add(x)
                if record is not None:
                    record.append(x.cpu())
                if static_act:
                    obs.observe(x)
            seen.add(name)
            if seen == set(names):
                seen.clear()
                raise _Stop

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
    try:
        _run_layer(layer, hidden, kwargs, index, device, stop_ok=True, replay=replay)
    finally:
        for h in handles:
            h.remove()
    s_x = obs.scale(config.fp8.fp8_max) if static_act else None
    h, cross, share = hess.finish(s_x)
    for n, m in mods.items():
        full = f"{prefix}.{n}"
        w = m.weight.detach().to(device=device, dtype=torch.float32)
        target = w if cross is None else asymmetric_target(w, h, cross, config.solver.asym_alpha, config.solver.damp)
        qw = solve(target, h, config, name=full)
        bias = None if m.bias is None else m.bias.detach()
        q = W4A8Linear.from_quantized(qw, bias, config.weight.scale_dtype, config.target)
        if s_x is not None:
            q.set_input_scale(s_x)
        set_submodule(layer, n, q.to(device))
        err = relative_output_error(w, qw, h)
        summary.linears.append(LinearReport(full, tuple(w.shape), err, qw.solve_seconds, s_x, share))


def _quantize_layer(layer, spec: ArchSpec, hidden, kwargs, i, prefix, config, device, summary,
                    replay_attention: bool = True, ref=None):
    """Quantize one decoder layer's Linears set by set; returns its outputs (the next layer's inputs).

    ref: the layer's `FloatLayerRecord` (float model run alongside), or None.
    """
    replay, attention = None, None
    try:
        for j, names in enumerate(spec.sequence):
            todo = [n for n in names if not _matches(f"{prefix}.{n}", config.ignore)]
            summary.skipped += [f"{prefix}.{n}" for n in names if n not in todo]
            if not todo:
                continue
            wanted = replay_attention and replay is None and spec.attention and todo == [spec.attention_output]
            record = [] if wanted else None
            _quantize_group(layer, todo, hidden, kwargs, i, prefix, config, device, summary, replay, record,
                            None if ref is None else ref.inputs[j])
            if record is not None and len(record) == len(hidden):
                attention = get_submodule(layer, spec.attention)
                replay = _ReplayedAttention(get_submodule(layer, spec.attention_output), record, device)
                set_submodule(layer, spec.attention, replay)
        return _run_layer(layer, hidden, kwargs, i, device, replay=replay)
    finally:
        if attention is not None:
            set_submodule(layer, spec.attention, attention)


def quantize_model(
    model, calib: torch.Tensor, config: QuantConfig, device: str | torch.device = "cpu",
    batch_size: int = 8, progress: bool = True, replay_attention: bool = True,
) -> QuantSummary:
    """Quantize every decoder Linear of `model` in place; returns the run's summary.

    calib: [S, T] token ids (see dpq.io.data.calibration_batches).
    replay_attention: replay the recorded attention outputs in the passes after the attention
        output Linear (see the module doc); False recomputes attention every pass (same result).
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
    torch.manual_seed(config.calib.seed)
    t0 = time.time()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    summary = QuantSummary(config.method, calib_tokens=calib.numel())
    model.to("cpu")
    layers = get_submodule(model, spec.layers)
    if config.solver.algorithm == "rtn" and not (config.activations_fp8 and config.target == "paper"):
        _quantize_data_free(layers, spec, config, device, summary, progress)
        return _finish(summary, t0, device)
    hidden, kwargs = capture_inputs(model, spec, calib, batch_size, device)
    sol = config.solver
    float_hidden = list(hidden) if (sol.asym_alpha > 0 or sol.smooth) else None
    refine = None
    if sol.refine_steps:
        from dpq.models.refining import RefineStream  # noqa: PLC0415

        refine = RefineStream(model, spec, calib, config, device)
    bar = tqdm(range(len(layers)), desc=f"dpq {config.method}", unit="layer", disable=not progress)
    for i in bar:
        prefix = f"{spec.layers}.{i}"
        layer = layers[i].to(device)
        ref = None
        if float_hidden is not None:  # the float layer on the float hidden states, before quantizing it
            ref = run_float_layer(layer, spec, float_hidden, kwargs, i, device)
            if sol.smooth:
                _smooth(layer, spec, model.config, ref, config, prefix, summary)
        if refine is not None:
            refine.float_targets(layer, i)
        layer_in = hidden
        hidden = _quantize_layer(layer, spec, hidden, kwargs, i, prefix, config, device, summary, replay_attention,
                                 ref)
        if refine is not None:  # train the quantized layer against the float one, then redo its outputs
            summary.refine[prefix] = refine.refine(layer, i)
            hidden = _run_layer(layer, layer_in, kwargs, i, device)
        if ref is not None:
            float_hidden = ref.outputs
        layers[i] = layer.to("cpu")
        last = summary.linears[-1] if summary.linears else None
        if last is not None:
            bar.set_postfix(err=f"{last.rel_error:.4f}")
    return _finish(summary, t0, device)


def _smooth(layer, spec: ArchSpec, model_config, ref, config: QuantConfig, prefix: str, summary) -> None:
    """Fold per-channel input scales into the float layer before it is quantized (`dpq.models.smoothing`)."""
    from dpq.models.smoothing import smooth_layer  # noqa: PLC0415

    skip = [names[0] for names in spec.sequence if all(_matches(f"{prefix}.{n}", config.ignore) for n in names)]
    for first, rep in smooth_layer(layer, spec, model_config, ref, config, skip).items():
        summary.smoothing[f"{prefix}.{first}"] = rep["choice"]


def _quantize_data_free(layers, spec: ArchSpec, config: QuantConfig, device, summary, progress) -> None:
    """Round-to-nearest weights with no activation scales need no calibration pass.

    The reported error is then the weight error ||W - W_q|| / ||W|| (the output error for
    white inputs, H = I), since no inputs were seen.
    """
    for i in tqdm(range(len(layers)), desc=f"dpq {config.method}", unit="layer", disable=not progress):
        prefix = f"{spec.layers}.{i}"
        for name in spec.linears:
            if _matches(f"{prefix}.{name}", config.ignore):
                summary.skipped.append(f"{prefix}.{name}")
                continue
            m = get_submodule(layers[i], name)
            w = m.weight.detach().to(device=device, dtype=torch.float32)
            qw = solve(w, None, config, name=f"{prefix}.{name}")
            bias = None if m.bias is None else m.bias.detach()
            q = W4A8Linear.from_quantized(qw, bias, config.weight.scale_dtype, config.target)
            set_submodule(layers[i], name, q.to("cpu"))
            err = float(torch.linalg.norm(w - qw.weight().to(w.device)) / torch.linalg.norm(w))
            summary.linears.append(LinearReport(f"{prefix}.{name}", tuple(w.shape), err, qw.solve_seconds, None))
    summary.data_free = True


def _finish(summary: QuantSummary, t0: float, device) -> QuantSummary:
    summary.seconds = time.time() - t0
    summary.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        summary.peak_device_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return summary
