"""Per-channel input scales folded exactly into the operation before each set of Linears.

With static per-tensor FP8 activations, one scale s_x serves all input channels of a Linear, so a
few large channels (or massive-activation tokens in a few channels) push the others towards
FP8's subnormal range; and INT4 weights lose least where inputs are large. Dividing input channel
j by s_j and multiplying weight column j by s_j leaves the float model unchanged
(W X = (W diag(s)) (diag(1/s) X)) and moves difficulty between activations and weights. The
division is folded into the op that produces the input (`ArchSpec.smooth_sources`):

- an RMSNorm: weight w -> (w + o) / s - o, o = `ArchSpec.norm_offset` (Gemma: y = (1 + w) * norm(x));
- `up_proj` before `down_proj`: rows (and bias) divided by s;
- `v_proj` before `o_proj`: rows divided by s; `o_proj`'s input channel h * d_head + c comes from
  value channel (h // n_rep) * d_head + c, so one scale per KV-head channel is shared by the
  query heads of that KV head.

No new tensor exists at inference: the checkpoint holds the folded norm weights and Linears.
`search_scales` picks s per set from candidates (no scaling first; AWQ's activation-power scales
s = a^alpha; SmoothQuant's s = a^alpha / w^(1 - alpha), a and w per-channel max-abs of the
inputs and of the set's weights; and outlier-only scales s = max(1, a / (r * a_99)) that bring
only the channels far above a_99, the largest channel maximum outside the top 1% of channels,
down to r * a_99: the massive-activation channels, each scaled weight column capped at 1x or 2x the
median column max-abs, since a larger column sets its INT4 group's range in every row), scored by the set's output error with the weights the solver
itself produces (DPQ-GAR on a Hessian of sampled tokens; round to nearest ranks candidates
differently from an error-compensating solver) and static max-abs FP8 inputs, on other sampled
calibration tokens of the float model (random tokens plus the highest-energy ones, so
massive-activation tokens are always scored). Each token's error counts relative to its own output norm, so a few massive tokens
do not decide the choice alone; the FP8 scale comes from every token's channel maxima.
"""

from __future__ import annotations

import dataclasses

import torch

from dpq.algorithms import hessian_from_inputs, solve
from dpq.algorithms.rtn import rtn_solve
from dpq.config import QuantConfig
from dpq.models.specs import ArchSpec, get_submodule
from dpq.numerics.fp8 import quantize_activation

AWQ_ALPHAS = (0.25, 0.5)
"""Exponents of the activation-only candidates s = a^alpha (normalised)."""
SQ_ALPHAS = (0.5,)
"""Migration strengths of the SmoothQuant candidates s = a^alpha / w^(1 - alpha)."""
OUTLIER_RATIOS = (1.0, 8.0)
"""r of the outlier-only candidates s = max(1, a / (r * a_99))."""
WEIGHT_GROWTH = (1.0, 2.0)
"""Caps of the outlier-only candidates: a scaled weight column's max-abs stays within c x the median column
max-abs; a larger column sets the INT4 range of its group in every row and rounds the group's other weights
to a few levels (measured: a column at 8x its neighbours costs far more than the FP8 inputs gain)."""
SAMPLE_TOKENS = 4096
"""Random calibration tokens of the search: three quarters build the candidate's Hessian, the rest
(with the highest-energy tokens) score it."""
TOP_TOKENS = 16
"""Highest-energy tokens always added to the sample (massive activations)."""
MIN_STAT = 1e-5
"""Floor of the channel statistics (dead channels)."""


def candidate_scales(amax: torch.Tensor, wmax: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """[(label, s [K])]: no scaling first, then AWQ-style and SmoothQuant-style scales, each
    normalised by sqrt(max(s) min(s)) so the weights' overall size stays put."""
    a, w = amax.float().clamp(min=MIN_STAT), wmax.float().clamp(min=MIN_STAT)
    out = [("none", torch.ones_like(a))]
    for al in AWQ_ALPHAS:
        out.append((f"awq{al:g}", a.pow(al)))
    for al in SQ_ALPHAS:
        out.append((f"sq{al:g}", a.pow(al) / w.pow(1 - al)))
    out = [(lab, s / (s.max() * s.min()).sqrt()) if lab != "none" else (lab, s) for lab, s in out]
    a99 = a.sort(descending=True).values[max(1, a.numel() // 100)]  # the largest channel max outside the top 1%
    for r in OUTLIER_RATIOS:
        for c in WEIGHT_GROWTH:  # a scaled column may reach c x the median column max (INT4 group ranges)
            s = torch.minimum((a / (r * a99)).clamp(min=1.0), (c * w.median() / w).clamp(min=1.0))
            if (s > 1).any():
                out.append((f"outlier{r:g}c{c:g}", s))
    return out


def set_error(weights: list[torch.Tensor], x: torch.Tensor, amax: torch.Tensor, s: torch.Tensor,
              config: QuantConfig, fit: torch.Tensor | None = None) -> float:
    """Sum over the set's Linears of the mean over tokens t of ||e_t||^2 / ||y_t||^2, y = X W^T,
    e = X8 Wq^T - y, with inputs scaled by 1/s.

    weights: [N, K] each; x: [T, K] sampled inputs; amax: [K] channel max-abs over all tokens
    (sets the static FP8 scale max(amax / s) / F). Wq is the FP8 inference weight of W diag(s)
    solved by the run's solver without the options beyond the paper (DPQ-GAR for dpq-gar-plus) on
    the Hessian of fit [T', K] / s, or rounded to nearest when fit is None.
    """
    xs = x / s  # (T, K)
    f = config.fp8.fp8_max
    if f is not None:
        s_x = float((amax / s).max()) / f
        xs = quantize_activation(xs, s_x, f) * s_x
    h = None if fit is None else hessian_from_inputs(fit / s)
    plain = dataclasses.replace(config, solver=dataclasses.replace(
        config.solver, group_search=False, deployed_hessian=False, asym_alpha=0.0, smooth=False, refine_steps=0))
    total = 0.0
    for w in weights:
        ref = x @ w.t()  # (T, N)
        ws = w * s
        wq = (rtn_solve(ws, config) if h is None else solve(ws, h, plain)).weight()  # (N, K)
        per_token = (xs @ wq.t() - ref).square().sum(1) / ref.square().sum(1).clamp(min=1e-30)  # (T,)
        total += float(per_token.mean())
    return total


def search_scales(weights: list[torch.Tensor], x: torch.Tensor, amax: torch.Tensor, config: QuantConfig,
                  tie=None) -> tuple[torch.Tensor, dict[str, float]]:
    """The candidate with the least `set_error`: (s [K], {label: error}).

    x: [T, K] sampled inputs, shuffled, the highest-energy tokens last: the first three quarters
    build each candidate's Hessian, the rest score it.

    tie(s_small) -> s [K] expands scales chosen in a smaller space (the value channels of o_proj's
    input); amax and the weights' column max-abs are reduced to that space by the caller's `tie`
    inverse, so candidates are built there (`reduce` below).
    """
    wmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)  # (K,)
    a_c, w_c = (amax, wmax) if tie is None else (tie.reduce(amax), tie.reduce(wmax))
    errors, best, best_s = {}, float("inf"), None
    n_fit = x.shape[0] * 3 // 4
    fit, x = x[:n_fit], x[n_fit:]
    for label, s in candidate_scales(a_c, w_c):
        s_full = s if tie is None else tie.expand(s)
        err = set_error(weights, x, amax, s_full, config, fit)
        errors[label] = err
        if err < best:  # strict: ties keep "none"
            best, best_s = err, s_full
    return best_s, errors


class KVTie:
    """o_proj's input channels [heads * d] <-> value channels [kv_heads * d]."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int) -> None:
        self.kv, self.rep, self.d = kv_heads, heads // kv_heads, head_dim

    def reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.kv, self.rep, self.d).amax(dim=1).reshape(-1)  # (kv * d,)

    def expand(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.kv, 1, self.d).expand(self.kv, self.rep, self.d).reshape(-1)  # (heads * d,)

    def value_rows(self, s: torch.Tensor) -> torch.Tensor:
        """The scale of each v_proj output row from o_proj's input scales [heads * d]."""
        return s.reshape(self.kv, self.rep, self.d)[:, 0, :].reshape(-1)


def kv_tie(model_config) -> KVTie:
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return KVTie(heads, kv, d)


@torch.no_grad()
def fold_scales(layer, spec: ArchSpec, names: tuple[str, ...], source: str, s: torch.Tensor, tie: KVTie | None) -> None:
    """Divide the set's input by s [K] at `source` and multiply the set's weight columns by s (exact)."""
    prev = get_submodule(layer, source)
    if isinstance(prev, torch.nn.Linear):
        rows = s if tie is None else tie.value_rows(s)
        prev.weight.div_(rows.to(prev.weight.dtype).unsqueeze(1))
        if prev.bias is not None:
            prev.bias.div_(rows.to(prev.bias.dtype))
    else:  # an RMSNorm: y = (o + w) * norm(x)
        o = spec.norm_offset
        w = prev.weight
        w.copy_(((w.float() + o) / s - o).to(w.dtype))
    for n in names:
        lin = get_submodule(layer, n)
        lin.weight.mul_(s.to(lin.weight.dtype).unsqueeze(0))


def sample_tokens(batches: list[torch.Tensor], count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample [<= count + TOP_TOKENS, K] of the tokens: random ones and the highest-energy ones,
    amax [K] over all tokens) of per-batch inputs [b, T, K]."""
    flat = [b.reshape(-1, b.shape[-1]) for b in batches]
    amax = torch.stack([f.abs().amax(dim=0) for f in flat]).amax(dim=0).float()
    allx = torch.cat(flat)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(allx.shape[0], generator=gen)[: min(count, allx.shape[0])]
    top = allx.float().square().sum(1).topk(min(TOP_TOKENS, allx.shape[0])).indices
    idx = torch.cat([idx[~torch.isin(idx, top)], top])  # random tokens, then the highest-energy ones
    return allx[idx].float(), amax


def smooth_layer(layer, spec: ArchSpec, model_config, record, config: QuantConfig, skip=()) -> dict[str, dict]:
    """Search and fold input scales for every set of one (still float) decoder layer.

    record: the layer's `dpq.models.float_path.FloatLayerRecord`; its inputs are rescaled to the
    smoothed layer. skip: first-Linear names of sets left alone (e.g. kept in float by --ignore).
    Returns {first Linear: {"choice": label, "errors": {label: error}}}.
    """
    sources = dict(spec.smooth_sources)
    report = {}
    for j, names in enumerate(spec.sequence):
        source = sources.get(names[0])
        if source is None or names[0] in skip:
            continue
        tie = kv_tie(model_config) if names[0] == spec.attention_output else None
        x, amax = sample_tokens(record.inputs[j], SAMPLE_TOKENS, config.calib.seed)
        weights = [get_submodule(layer, n).weight.detach().float() for n in names]
        s, errors = search_scales(weights, x, amax, config, tie)
        choice = min(errors, key=errors.get)
        report[names[0]] = {"choice": choice, "errors": errors}
        if choice == "none":
            continue
        fold_scales(layer, spec, names, source, s, tie)
        record.scale_inputs(j, s)
    return report
