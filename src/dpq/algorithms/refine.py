"""Optional block refinement (`--refine`): SignRound on the solver's result, per decoder layer.

After the solver quantized a decoder layer, its W4A8 Linears are made trainable for a few hundred
steps: each weight gets a rounding offset V (init 0, |V| <= 1) and each group a factor for its
min and one for its max (init 1, in [0.8, 1.2]), and

    s'  = s * (beta * (15 - z) + alpha * z) / 15          (rounded to the scale dtype)
    z'  = round(alpha * z * s / s')
    q'  = clamp(floor((q - z) * s / s' + 1/2 + V) + z', 0, 15)
    W8  = fp8((q' - z') * s')                               (the inference weight, times s_w)
    y   = s_x * fp8(x / s_x) @ (s_w * W8)^T + b

reproduce the solver's codes exactly at the start. The loss is the mean squared error between the
layer's output on the quantized model's hidden states and the float layer's output on the float
hidden states; every rounding and both FP8 casts pass the gradient straight through (STE). The
parameters move by signed gradient descent (AutoRound's SignRound: p -= lr * sign(grad), lr =
1 / steps). The result is kept only if its loss over all refinement tokens is lower than the
solver's; it is written back as ordinary codes, scales and zero points (same format, same kernel).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from dpq.numerics.fp8 import fp8_cast
from dpq.numerics.int4 import MAXQ, expand_groups, unpack_int4

MINMAX_RANGE = (0.8, 1.2)
"""Bounds of the min/max factors."""
V_RANGE = 1.0
"""|V| bound: a code moves by at most one step through V."""


def _ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y's value with x's gradient (straight-through estimator)."""
    return x + (y - x).detach()


class RefinableLinear(nn.Module):
    """A W4A8Linear's function with trainable rounding offsets and group min/max factors."""

    def __init__(self, q) -> None:  # q: dpq.nn.linear.W4A8Linear (paper target)
        super().__init__()
        self.src = q
        k, g = q.in_features, q.group_size
        codes = unpack_int4(q.weight, k).float()  # (N, K)
        self.register_buffer("s", q.scales.float().clone())  # (N, G)
        self.register_buffer("z", q.zeros.float().clone())  # (N, G)
        self.register_buffer("base", (codes - expand_groups(self.z, k, g)) * expand_groups(self.s, k, g))  # (N, K)
        self.v = nn.Parameter(torch.zeros_like(codes))
        self.alpha = nn.Parameter(torch.ones_like(self.s))
        self.beta = nn.Parameter(torch.ones_like(self.s))
        self.k, self.g, self.f = k, g, q.fp8_max
        self.s_w = float(q.weight_scale)
        self.s_x = None if q.input_scale is None else float(q.input_scale)
        self.scale_dtype = q.scales.dtype
        self.bias = None if q.bias is None else q.bias.detach().float()

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale [N, G], zero [N, G]) under the current factors (scale rounded to its storage dtype)."""
        s = self.s * (self.beta * (MAXQ - self.z) + self.alpha * self.z) / MAXQ
        s = _ste(s, s.detach().to(self.scale_dtype).float().clamp(min=torch.finfo(self.scale_dtype).tiny))
        z = _ste(self.alpha * self.z * self.s / s, torch.round(self.alpha * self.z * self.s / s).clamp(0, MAXQ))
        return s, z

    def codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q' [N, K], s' [N, G], z' [N, G]) with straight-through rounding."""
        s, z = self.params()
        se, ze = expand_groups(s, self.k, self.g), expand_groups(z, self.k, self.g)
        u = self.base / se + 0.5 + self.v + ze
        q = _ste(u, torch.floor(u).clamp(0, MAXQ))
        return q, s, z

    def weight(self) -> torch.Tensor:
        q, s, z = self.codes()
        w = (q - expand_groups(z, self.k, self.g)) * expand_groups(s, self.k, self.g)
        return _ste(w, fp8_cast(w, self.f)) * self.s_w  # (N, K) real units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        scale = self.s_w
        if self.s_x is not None:  # the FP8 codes x8 = fp8(x / s_x); the kernel applies s_x * s_w after the dot
            xf = _ste(xf / self.s_x, fp8_cast(xf / self.s_x, self.f))
            scale = self.s_x * self.s_w
        y = (xf @ (self.weight() / self.s_w).t()) * scale  # (.., N)
        if self.bias is not None:
            y = y + self.bias
        return _ste(y, y.to(torch.bfloat16).float()).to(x.dtype)  # BF16 output, as the kernel

    @torch.no_grad()
    def clamp_(self) -> None:
        self.v.clamp_(-V_RANGE, V_RANGE)
        self.alpha.clamp_(*MINMAX_RANGE)
        self.beta.clamp_(*MINMAX_RANGE)

    @torch.no_grad()
    def write_back(self) -> None:
        """Store the refined codes, scales and zero points in the original W4A8Linear."""
        from dpq.numerics.int4 import pack_int4  # noqa: PLC0415

        q, s, z = self.codes()
        self.src.weight.copy_(pack_int4(q.round().to(torch.uint8)))
        self.src.scales.copy_(s.to(self.src.scales.dtype))
        self.src.zeros.copy_(z.round().to(torch.uint8))
        self.src.invalidate_cache()


def _swap(layer, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Put modules at their dotted names in `layer`; returns what was there."""
    from dpq.models.specs import get_submodule, set_submodule  # noqa: PLC0415

    old = {n: get_submodule(layer, n) for n in modules}
    for n, m in modules.items():
        set_submodule(layer, n, m)
    return old


def _loss(layer, inputs, targets, kwargs, run) -> float:
    with torch.no_grad():
        return sum(float((run(layer, x, kw) - y).square().mean()) for x, y, kw in zip(inputs, targets, kwargs)) / len(inputs)


def refine_quantized_layer(layer, names: list[str], inputs: list[torch.Tensor], targets: list[torch.Tensor],
                           kwargs: list[dict], run, steps: int, seed: int = 0) -> dict:
    """SignRound over the W4A8Linears `names` of `layer` (in place); see the module doc.

    inputs[b], targets[b]: [1, T, H] quantized-model hidden states and the float layer's outputs;
    kwargs[b]: the layer's keyword arguments for sequence b; run(layer, x, kw) -> [1, T, H].
    Returns {"loss_before", "loss_after", "kept", "seconds", "steps"}.
    """
    from dpq.models.specs import get_submodule  # noqa: PLC0415

    t0 = time.perf_counter()
    trainable = {n: RefinableLinear(get_submodule(layer, n)) for n in names}
    frozen = [p for p in layer.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    old = _swap(layer, trainable)
    params = [p for m in trainable.values() for p in (m.v, m.alpha, m.beta)]
    before = _loss(layer, inputs, targets, kwargs, run)
    lr = 1.0 / steps
    gen = torch.Generator().manual_seed(seed)
    try:
        for _ in range(steps):
            b = int(torch.randint(0, len(inputs), (1,), generator=gen))
            loss = (run(layer, inputs[b], kwargs[b]) - targets[b]).square().mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, gr in zip(params, grads):
                    p.sub_(lr * torch.sign(gr))
            for m in trainable.values():
                m.clamp_()
        after = _loss(layer, inputs, targets, kwargs, run)
    finally:
        _swap(layer, old)
        for p in frozen:
            p.requires_grad_(True)
    kept = after < before
    if kept:
        for m in trainable.values():
            m.write_back()
    return {"loss_before": before, "loss_after": after, "kept": kept, "steps": steps,
            "seconds": time.perf_counter() - t0}
