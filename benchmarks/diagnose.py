"""Where does a W4A8 checkpoint lose its accuracy: the weights, or the FP8 activations, and where?

    python benchmarks/diagnose.py CHECKPOINT [--max-windows 16] [--variants all|NAME,...] [--source MODEL] \
        [--ppl wikitext2|none] [--tasks lambada,... --limit N] \
        [--json benchmarks/results/diagnose_NAME.json] [--markdown FILE.md]

Evaluates WikiText-2 perplexity (first --max-windows windows of 2048), and with --tasks the
accuracy on those lm-eval tasks, of variants of one W4A8 checkpoint, each changing one thing,
against the float model it was quantized from:

The variants (typed in `dpq.eval.diagnose`, whose docstring lists them): float, w4a8, weights-only,
acts-only, float-acts:K, float:A+B, float-layers:N[-M], float-kind:K, each-layer, each-kind.

LAMBADA's perplexity of the target word is shown beside its accuracy: it moves smoothly where
200 examples' accuracy cannot resolve a one-layer change. Writes JSON and a markdown table;
every row says which windows it used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import dpq
from dpq.eval.diagnose import SHORTHANDS, VARIANTS, Variant, check_name
from dpq.eval.diagnose import build as build_variant
from dpq.eval.diagnose import expand as expand_variants
from dpq.eval.perplexity import wikitext2_perplexity
from dpq.eval.tasks import run_tasks
from dpq.io.checkpoint import read_quant_block
from dpq.models.loading import load_float_model
from dpq.models.specs import get_submodule, spec_for

def check_variant(v: str) -> None:
    """Raise ValueError, with the fix, for a variant name this script does not know."""
    check_name(v)


def expand(variants, n_layers: int) -> list[str]:
    """The variant names with each-layer / each-kind spelled out; layer indices checked against n_layers."""
    return [str(v) for v in expand_variants(variants, n_layers)]


def build(variant: str, quantized, float_model):
    """The model of one variant, by name (`dpq.eval.diagnose.build`)."""
    return build_variant(Variant.parse(variant), quantized, float_model)


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
