"""Where does a W4A8 checkpoint lose its accuracy: the weights, or the FP8 activations, and where?

    python benchmarks/diagnose.py CHECKPOINT [--max-windows 16] [--variants all|NAME,...] [--source MODEL] \
        [--ppl wikitext2|none] [--tasks lambada,... --limit N] \
        [--json benchmarks/results/diagnose_NAME.json] [--markdown FILE.md]

Evaluates WikiText-2 perplexity (first --max-windows windows of 2048), and with --tasks the
accuracy on those lm-eval tasks, of variants of one W4A8 checkpoint, each changing one thing,
against the float model it was quantized from:

  float          the source model
  w4a8           the checkpoint as saved (INT4 -> FP8 weights, FP8 activations)
  weights-only   the checkpoint's weights (W4A8Linear.effective_weight), activations left in float
  acts-only      the float weights, activations quantized to FP8 as the checkpoint does: with its
                 static s_x (target paper) or per token (target vllm-w4afp8)
  float-acts:K   the checkpoint with float activations into the Linears named K only
                 (K = qkv, o, gate_up, down), i.e. what FP8 activations cost at K
  float:A+B      the checkpoint with the Linears named A, B (full names, e.g.
                 model.layers.11.mlp.down_proj) put back to the float model's: what they cost
  float-layers:N the checkpoint with every Linear of decoder layer N (or layers N-M) put back
                 to the float model's: what quantizing that layer costs
  float-kind:K   the checkpoint with the Linears of kind K put back to float in every layer
  each-layer     shorthand for float-layers:0, float-layers:1, ... (one per decoder layer)
  each-kind      shorthand for float-kind:qkv, float-kind:o, float-kind:gate_up, float-kind:down

LAMBADA's perplexity of the target word is shown beside its accuracy: it moves smoothly where
200 examples' accuracy cannot resolve a one-layer change. Writes JSON and a markdown table;
every row says which windows it used.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn

import dpq
from dpq.eval.perplexity import wikitext2_perplexity
from dpq.eval.tasks import run_tasks
from dpq.io.checkpoint import read_quant_block
from dpq.models.loading import load_float_model
from dpq.models.specs import get_submodule, spec_for
from dpq.nn.linear import W4A8Linear
from dpq.numerics.fp8 import quantize_activation
from dpq.numerics.vllm_w4afp8 import quantize_per_token

KINDS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
         "down": ("down_proj",)}
VARIANTS = ("float", "w4a8", "weights-only", "acts-only") + tuple(f"float-acts:{k}" for k in KINDS)
SHORTHANDS = ("each-layer", "each-kind")


def _layer_range(text: str) -> tuple[int, int]:
    """'5' -> (5, 5), '0-5' -> (0, 5); ValueError naming the problem otherwise."""
    lo, sep, hi = text.partition("-")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        raise ValueError(f"float-layers:{text}: give a layer index N or a range N-M, e.g. float-layers:0-5")
    lo_i, hi_i = int(lo), int(hi) if sep else int(lo)
    if hi_i < lo_i:
        raise ValueError(f"float-layers:{text}: the range is empty (write the lower index first)")
    return lo_i, hi_i


def check_variant(v: str) -> None:
    """Raise ValueError, with the fix, for a variant name this script does not know."""
    if v in VARIANTS or v in SHORTHANDS or v.startswith("float:"):
        return
    if v.startswith("float-layers:"):
        _layer_range(v.split(":", 1)[1])
        return
    if v.startswith("float-kind:"):
        if v.split(":", 1)[1] not in KINDS:
            raise ValueError(f"{v}: unknown kind, use one of {', '.join(KINDS)}")
        return
    raise ValueError(f"unknown variant(s) {v}: use {', '.join(VARIANTS + SHORTHANDS)}, "
                     "float-layers:N[-M], float-kind:K or float:NAME+NAME")


def expand(variants, n_layers: int) -> list[str]:
    """The variant list with each-layer / each-kind spelled out; layer indices checked against n_layers."""
    out = []
    for v in variants:
        if v == "each-layer":
            out += [f"float-layers:{i}" for i in range(n_layers)]
        elif v == "each-kind":
            out += [f"float-kind:{k}" for k in KINDS]
        else:
            if v.startswith("float-layers:") and _layer_range(v.split(":", 1)[1])[1] >= n_layers:
                raise ValueError(f"{v}: the model has {n_layers} decoder layers (0 to {n_layers - 1})")
            out.append(v)
    return out


class _FloatActs(nn.Module):
    """A W4A8Linear run with its weight in real units (`effective_weight`, any target) but unquantized activations."""

    def __init__(self, lin: W4A8Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x):
        w = self.lin.effective_weight()
        y = x.float() @ w.t()
        if self.lin.bias is not None:
            y = y + self.lin.bias.float()
        return y.to(x.dtype)


class _FP8Acts(nn.Module):
    """A float Linear whose input is first quantized to FP8: with a static scale s_x, or per token (s_x None)."""

    def __init__(self, lin: nn.Linear, s_x: float | None, fp8_max: float) -> None:
        super().__init__()
        self.lin, self.s_x, self.fp8_max = lin, s_x, fp8_max

    def forward(self, x):
        if self.s_x is None:  # vLLM's dynamic per-token FP8 (target vllm-w4afp8)
            x8, a = quantize_per_token(x.reshape(-1, x.shape[-1]))
            return self.lin((x8 * a.unsqueeze(1)).reshape(x.shape).to(x.dtype))
        return self.lin((quantize_activation(x, self.s_x, self.fp8_max) * self.s_x).to(x.dtype))


def _linears(model):
    spec = spec_for(model.config)
    for i, layer in enumerate(get_submodule(model, spec.layers)):
        for name in spec.linears:
            yield i, layer, name


def _swap(layer, name, module):
    parent, _, leaf = name.rpartition(".")
    setattr(get_submodule(layer, parent) if parent else layer, leaf, module)


def _with_float(quantized, float_model, names):
    """A copy of `quantized` whose modules of these full names are copies of float_model's."""
    m = copy.deepcopy(quantized)
    for full in names:
        parent, _, leaf = full.rpartition(".")
        setattr(get_submodule(m, parent), leaf, copy.deepcopy(get_submodule(float_model, full)))
    return m


def build(variant: str, quantized, float_model):
    """The model of one variant (a modified copy; the inputs are left untouched)."""
    if variant == "float":
        return float_model
    if variant == "w4a8":
        return quantized
    if variant == "acts-only":
        m = copy.deepcopy(float_model)
        for (i, layer, name), (_, qlayer, _) in zip(_linears(m), _linears(quantized)):
            q = get_submodule(qlayer, name)
            if isinstance(q, W4A8Linear) and q.is_w4a8:
                s_x = None if q.dynamic_act else float(q.input_scale)
                _swap(layer, name, _FP8Acts(get_submodule(layer, name), s_x, q.fp8_max))
        return m
    if variant.startswith("float:"):
        return _with_float(quantized, float_model, variant.split(":", 1)[1].split("+"))
    if variant.startswith(("float-layers:", "float-kind:")):
        body = variant.split(":", 1)[1]
        if variant.startswith("float-layers:"):
            lo, hi = _layer_range(body)
            keep = lambda i, leaf: lo <= i <= hi  # noqa: E731
        else:
            keep = lambda i, leaf: leaf in KINDS[body]  # noqa: E731
        layers = spec_for(quantized.config).layers
        names = [f"{layers}.{i}.{name}" for i, _, name in _linears(quantized) if keep(i, name.rpartition(".")[2])]
        return _with_float(quantized, float_model, names)
    kinds = tuple(KINDS) if variant == "weights-only" else (variant.split(":", 1)[1],)
    leaves = {leaf for k in kinds for leaf in KINDS[k]}
    m = copy.deepcopy(quantized)
    for i, layer, name in _linears(m):
        q = get_submodule(layer, name)
        if name.rpartition(".")[2] in leaves and isinstance(q, W4A8Linear) and q.is_w4a8:
            _swap(layer, name, _FloatActs(q))
    return m


def _table(rows: list[dict], tasks: list[str]) -> list[str]:
    """Markdown lines: perplexity and each task's acc (%) per variant, with the change against float."""
    base = next((r for r in rows if r["variant"] == "float"), None)
    has_ppl = any(r["wikitext2_ppl"] is not None for r in rows)
    with_ppl = [t for t in tasks if any(r["tasks"][t].get("perplexity") is not None for r in rows)]
    head = (["variant"] + (["wikitext2 ppl", "change vs float"] if has_ppl else []) + [f"{t} acc %" for t in tasks]
            + [f"{t} ppl" for t in with_ppl])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"]]
        if has_ppl:
            d = "" if base is None or r is base else f"{r['wikitext2_ppl'] - base['wikitext2_ppl']:+.3f}"
            cells += [f"{r['wikitext2_ppl']:.3f} ({r['windows']})", d]
        for t in tasks:
            acc = r["tasks"][t]["acc"]
            d = "" if base is None or r is base else f" ({100 * (acc - base['tasks'][t]['acc']):+.1f})"
            cells.append(f"{100 * acc:.1f}{d}")
        for t in with_ppl:
            x = r["tasks"][t].get("perplexity")
            b = None if base is None or r is base else base["tasks"][t].get("perplexity")
            cells.append("-" if x is None else f"{x:.3f}" + ("" if b is None else f" ({x - b:+.3f})"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--max-windows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--variants", default="all", help=f"comma-separated from {', '.join(VARIANTS + SHORTHANDS)}, float-layers:N[-M], float-kind:K, float:NAME+NAME")
    p.add_argument("--source", default=None, help="the float model, if the checkpoint does not record it")
    p.add_argument("--ppl", choices=("wikitext2", "none"), default="wikitext2")
    p.add_argument("--tasks", default="", help="comma-separated lm-eval tasks (see dpq eval --help)")
    p.add_argument("--limit", type=int, default=None, help="examples per task")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    a = p.parse_args(argv)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    if a.ppl == "none" and not tasks:
        p.error("nothing to evaluate: --ppl none needs --tasks")
    variants = VARIANTS if a.variants == "all" else tuple(v.strip() for v in a.variants.split(","))
    try:
        for v in variants:
            check_variant(v)
    except ValueError as e:
        p.error(str(e))
    block = read_quant_block(a.checkpoint)
    source = a.source or block.get("source_model")
    if not source:
        p.error(f"{a.checkpoint} records no source model: name the float model with --source")
    quantized, tok = dpq.load(a.checkpoint, dtype=torch.float32)
    float_model, _, _ = load_float_model(source)
    try:
        variants = expand(variants, len(get_submodule(quantized, spec_for(quantized.config).layers)))
    except ValueError as e:
        p.error(str(e))
    rows = []
    for v in variants:
        model = build(v, quantized, float_model)
        row = {"variant": v, "wikitext2_ppl": None, "windows": None}
        if a.ppl == "wikitext2":
            r = wikitext2_perplexity(model, tok, seq_len=a.seq_len, max_windows=a.max_windows)
            row.update(wikitext2_ppl=r.ppl, windows=f"{r.windows_used}/{r.windows_total}")
        if tasks:
            row["tasks"] = {t: {k: x[k] for k in ("acc", "perplexity", "n") if k in x}
                            for t, x in run_tasks(model, tok, tasks, limit=a.limit).items()}
        rows.append(row)
        print(f"{v:>18}: ppl {row['wikitext2_ppl']} ({row['windows']} windows) "
              + " ".join(f"{t} {x['acc']:.3f}" for t, x in row.get("tasks", {}).items()), flush=True)
    lines = _table(rows, tasks)
    md = f"{a.checkpoint} ({block.get('method')}, F = {block['config'].fp8.fp8_max:g})\n\n" + "\n".join(lines)
    print(md)
    out = {"checkpoint": a.checkpoint, "method": block.get("method"), "settings": block.get("settings"),
           "calibration": block.get("calibration"), "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    if a.markdown:
        Path(a.markdown).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
