"""The markdown tables of docs/results, generated from the JSON files in this folder.

    python benchmarks/results/tables.py            # print every table
    python benchmarks/results/tables.py NAME ...   # print the named ones
    python benchmarks/results/tables.py --update docs/results/*.md   # rewrite the tables in place

Each table in docs/results/*.md sits between `<!-- table: NAME -->` and `<!-- /table -->`;
tests/benchmarks/test_results_index.py checks that it is exactly what this script prints, so the
figures on those pages are the measured ones. Values are shown rounded (perplexity to 3 decimals,
accuracy to 0.1 point), never recomputed: the only derived figures are differences against the
float model and the paired change of an average (dpq.eval.report.paired_average_difference, the
rule `dpq compare` prints).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from dpq.eval.report import paired_average_difference

HERE = Path(__file__).parent
TASKS = ["piqa", "arc_easy", "arc_challenge", "boolq", "openbookqa", "winogrande", "lambada", "hellaswag"]
ORDER = ["bf16", "rtn-w4a16", "gptq-w4a16", "rtn-w4a8", "naive-w4a8", "dpq", "dpq-gar"]
MODELS = {"gemma3-270m": "Gemma-3-270M", "smollm2-135m": "SmolLM2-135M"}


def load(rel: str) -> dict:
    return json.loads((HERE / rel).read_text())


def table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def grid(model: str, f: int, kind: str) -> dict:
    folder = "method-comparison" if "ppl" in kind else "zero-shot-tasks"
    return load(f"{folder}/{model}_g128_f{f}_{kind}.json")["results"]


def inc(x: float, base: float) -> str:
    return f"{x:.3f} ({x - base:+.3f})"


def secs(r: dict, key: str) -> str:
    v = r["settings"]["timings"].get(key)
    return "-" if v is None else f"{v:.1f}"


def ppl_table(model: str, f: int, kind: str) -> str:
    """Perplexity of every method of a grid, changes against the float model of the same windows;
    beside it the same method on the other windows (F = 448) or at F = 448 (F = 240)."""
    res = grid(model, f, kind)
    if f == 448:
        other_kind = "fullppl" if kind == "ppl16" else "ppl16"
        other, other_head = grid(model, 448, other_kind), ("full test" if kind == "ppl16" else "first 16 windows")
    else:
        other, other_head = grid(model, 448, kind), "F = 448, same windows"
    base, other_base = grid(model, 448, kind)["bf16"]["wikitext2_ppl"], other["bf16"]["wikitext2_ppl"]
    windows = next(iter(res.values()))["windows"]
    rows = []
    for m in [m for m in ORDER if m in res]:
        p, o = res[m]["wikitext2_ppl"], other.get(m, {}).get("wikitext2_ppl")
        rows.append([m, f"{p:.3f}" if m == "bf16" else inc(p, base),
                     "not measured" if o is None else (f"{o:.3f}" if m == "bf16" else inc(o, other_base)),
                     secs(res[m], "quantize_s"), secs(res[m], "ppl_s")])
    return table(["method", f"ppl ({windows} windows)", other_head, "quantize s", "perplexity s"], rows)


def tasks_table(model: str, f: int) -> str:
    """Eight tasks (acc %), the average and its paired change against the float model."""
    res = grid(model, f, "limit200")
    base = grid(model, 448, "limit200")["bf16"]
    rows = []
    for m in [m for m in ORDER if m in res]:
        r = res[m]
        cells = [f"{100 * r['tasks'][t]['acc']:.1f}" for t in TASKS] + [f"{100 * r['average']:.1f}"]
        p = paired_average_difference(base, r) if m != "bf16" else None
        cells.append("" if p is None else f"{100 * p['delta']:+.2f} +/- {100 * p['stderr']:.2f}")
        rows.append([m] + cells)
    return table(["method"] + TASKS + ["average", "change (paired)"], rows)


def lambada_table() -> str:
    res = load("zero-shot-tasks/smollm2-135m_g128_f448_lambada_limit200.json")["results"]
    rows = []
    for m in [m for m in ORDER if m in res]:
        t = res[m]["tasks"]["lambada"]
        p = paired_average_difference(res["bf16"], res[m]) if m != "bf16" else None
        change = "" if p is None else f"{100 * p['delta']:+.1f} +/- {100 * p['stderr']:.1f}"
        rows.append([m, f"{100 * t['acc']:.1f}", change,
                     f"{t['perplexity']:.2f}"])
    return table(["method", "LAMBADA acc % (200)", "change (paired)", "LAMBADA ppl"], rows)


def mmlu_table() -> str:
    cols = [(m, f) for m in MODELS for f in (448, 240)]
    data = {c: grid(c[0], c[1], "mmlu_limit5") for c in cols}
    rows = []
    for m in ORDER:
        cells = []
        for c in cols:
            t = data[c].get(m, {}).get("tasks", {}).get("mmlu")
            cells.append("-" if t is None else f"{100 * t['acc']:.1f} +/- {100 * t['acc_stderr']:.1f}")
        rows.append([m] + cells)
    return table(["method"] + [f"{MODELS[m]}, F = {f}" for m, f in cols], rows)


DIAG_LABELS = {"float": "float model", "w4a8": "as saved (FP8 weights from INT4, FP8 activations)",
               "weights-only": "weights only (activations left in float)",
               "acts-only": "activations only (float weights, FP8 activations with the checkpoint's s_x)",
               "float-kind:qkv": "q, k, v projections, every layer", "float-kind:o": "o projection, every layer",
               "float-kind:gate_up": "gate and up projections, every layer",
               "float-kind:down": "down projection, every layer"}


def diagnose_table(name: str, variants=None) -> str:
    rows_ = load(f"diagnose/{name}.json")["rows"]
    base = next(r for r in rows_ if r["variant"] == "float")["tasks"]["lambada"]
    with_ppl = "perplexity" in base
    rows = []
    for r in rows_:
        v = r["variant"]
        if variants is not None and v not in variants and not any(v.startswith(p) for p in variants if p.endswith(":")):
            continue
        t = r["tasks"]["lambada"]
        acc = f"{100 * t['acc']:.1f}" + ("" if v == "float" else f" ({100 * (t['acc'] - base['acc']):+.1f})")
        label = DIAG_LABELS.get(v, v.replace("float-layers:", "decoder layer ") if v.startswith("float-layers:") else v)
        row = [label, acc]
        if with_ppl:
            change = "" if v == "float" else f" ({t['perplexity'] - base['perplexity']:+.3f})"
            row.append(f"{t['perplexity']:.3f}" + change)
        rows.append(row)
    return table(["put back to float / variant", "LAMBADA acc %"] + (["LAMBADA ppl"] if with_ppl else []), rows)


def outliers_table() -> str:
    rows = []
    for name in ("smollm2-135m_8x512", "smollm2-135m_8x2048", "gemma3-270m_8x512"):
        d = load(f"activation-outliers/{name}.json")
        for lin, v in sorted(d["inputs"].items(), key=lambda kv: -kv[1]["share"])[:3]:
            rows.append([f"{d['model']} ({d['samples']} x {d['seq_len']})", lin, f"{100 * v['share']:.1f}%",
                         f"{v['max_abs']:.0f}", f"{v['at_position_0']}/{v['top_tokens']}"])
    return table(["model (tokens)", "Linear input", "top 0.1% tokens' share of tr(H)", "max abs x",
                  "of them at position 0"], rows)


def outliers_summary() -> str:
    rows = []
    for name in ("smollm2-135m_8x512", "smollm2-135m_8x2048", "gemma3-270m_8x512"):
        d = load(f"activation-outliers/{name}.json")
        shares = [v["share"] for v in d["inputs"].values()]
        rows.append([d["model"], f"{d['samples']} x {d['seq_len']}", len(shares), f"{100 * max(shares):.1f}%",
                     f"{100 * statistics.median(shares):.2f}%", sum(s > 0.25 for s in shares)])
    return table(["model", "tokens", "Linear inputs", "largest share", "median share", "over 25%"], rows)


def variant_table(rel: str) -> str:
    """A 16-window variant run beside the all-quantized SmolLM2 F = 448 grid."""
    res = load(rel)["results"]
    ref = grid("smollm2-135m", 448, "ppl16")
    rows = [[m, f"{ref[m]['wikitext2_ppl']:.3f}", f"{r['wikitext2_ppl']:.3f}",
             f"{r['wikitext2_ppl'] - ref[m]['wikitext2_ppl']:+.3f}"] for m, r in res.items()]
    return table(["method", "ppl, as in the grid (16/148)", "ppl, this variant (16/148)", "change"], rows)


def seeds_table(model: str) -> str:
    d = load(f"seed-spread/{model}_g128_f240_ppl16_spread.json")
    rows = []
    for m in ("naive-w4a8", "dpq", "dpq-gar"):
        x = d["metrics"][m]["wikitext2_ppl"]
        per_seed = [f"{x['values'][str(s)]:.3f}" for s in d["seeds"]]
        rows.append([m] + per_seed + [f"{x['mean']:.3f}", f"{x['spread']:.3f}"])
    return table(["method (F = 240)"] + [f"seed {s}" for s in d["seeds"]] + ["mean", "spread (max - min)"], rows)


def targets_table() -> str:
    rows = []
    for t in load("accuracy-targets/accuracy_targets.json")["targets"]:
        o, r, a = t["ordering"], t["ppl_ratio"], t["accuracy"]
        rows.append([t["model"], int(t["fp8_max"]), f"{'yes' if o['holds'] else 'NO'} ({o['windows']} windows)",
                     f"{r['value']:.2f}: {'yes' if r['holds'] else 'NO'}",
                     f"{a['delta_points']:+.2f} +/- {a['paired_stderr_points']:.2f}: {'yes' if a['holds'] else 'NO'}"])
    return table(["model", "F", "dpq-gar < naive < rtn (ppl)", "dpq-gar / gptq-w4a16 increase (<= 1.1)",
                  "avg acc dpq-gar - float (within 1 pt)"], rows)


def solver_quality_table() -> str:
    rows = [[s["model"], s["method"], f"{s['mean_err']:.5f}", f"{s['mean_err_h']:.5f}", s["worst_layer"],
             f"{s['worst_err']:.5f}", f"{s['mean_solve_seconds']:.3f}"]
            for s in load("solver-quality/solver_quality.json")["summary"]]
    return table(["model", "method", "mean err (deployed, held-out)", "mean err_h (weight only, calib H)",
                  "worst layer", "worst err", "solve s"], rows)


def solver_speed_table() -> str:
    rows = [[f"{r['shape'][0]}x{r['shape'][1]}", f"{r['gptq_s']:.2f}", f"{r['dpq_s']:.2f}", f"{r['ratio']:.2f}"]
            for r in load("solver-speed/solver_speed.json")["rows"]]
    return table(["shape N x K", "GPTQ s", "DPQ s", "DPQ / GPTQ"], rows)


def cpu_forward_table() -> str:
    d = load("cpu-forward/gemma3-270m_dpq-gar_f448.json")
    rows = [[f"{r['batch']} x {r['tokens']}", f"{r['off_ms']:.0f}", f"{r['on_ms']:.0f}", f"{r['speedup']:.2f}x",
             "identical" if r["identical"] else "differ"] for r in d["rows"]]
    return table([f"forward, batch x tokens ({d['threads']} threads, median of {d['repeats']})", "cache off ms",
                  "cache on ms", "speed-up", "logits"], rows)


def export_table() -> str:
    d = load("export-agreement/export_agreement.json")
    rows = []
    for name in ("smollm2-paper-sym", "smollm2-paper-asym", "gemma3-vllm"):
        c = d[name]
        rows.append([name, f"{c['ppl_dpq']:.2f}", f"{c['ppl_transformers']:.2f}", f"{100 * c['ppl_rel_diff']:+.2f}%",
                     f"{100 * c['top1_agreement']:.1f}%",
                     f"{100 * c['weight_difference']['transformers_vs_dpq']['mean']:.2f}%"])
    return table(["export", "dpq reference ppl", "transformers ppl", "difference", "top-1 agreement",
                  "weight difference (mean rel.)"], rows)


TABLES = {
    **{f"ppl_{m}_f{f}_{k}": (lambda m=m, f=f, k=k: ppl_table(m, f, k))
       for m in MODELS for f in (448, 240) for k in ("ppl16", "fullppl")},
    **{f"tasks_{m}_f{f}": (lambda m=m, f=f: tasks_table(m, f)) for m in MODELS for f in (448, 240)},
    "lambada_smollm2": lambda: lambada_table(),
    "mmlu": lambda: mmlu_table(),
    "diagnose_gemma_split": lambda: diagnose_table("gemma3-270m_dpq-gar_f448_lambada_split"),
    "diagnose_gemma_kinds": lambda: diagnose_table("gemma3-270m_dpq-gar_f448_lambada_layers",
                                                   ("float", "w4a8", "float-kind:")),
    "diagnose_gemma_layers": lambda: diagnose_table("gemma3-270m_dpq-gar_f448_lambada_layers", ("float-layers:",)),
    "diagnose_smollm2_split": lambda: diagnose_table("smollm2-135m_dpq-gar_f448_lambada_split"),
    "outliers": lambda: outliers_table(),
    "outliers_summary": lambda: outliers_summary(),
    "ignore_downproj": lambda: variant_table("ignore-downproj/smollm2-135m_g128_f448_ppl16.json"),
    "skip_first": lambda: variant_table("skip-first/smollm2-135m_g128_f448_ppl16.json"),
    "seeds_smollm2-135m": lambda: seeds_table("smollm2-135m"),
    "seeds_gemma3-270m": lambda: seeds_table("gemma3-270m"),
    "targets": lambda: targets_table(),
    "solver_quality": lambda: solver_quality_table(),
    "solver_speed": lambda: solver_speed_table(),
    "cpu_forward": lambda: cpu_forward_table(),
    "export_agreement": lambda: export_table(),
}


BLOCK = re.compile(r"<!-- table: (\S+) -->\n.*?<!-- /table -->", re.S)


def render(text: str) -> str:
    """`text` with every marked table replaced by the one generated now."""
    return BLOCK.sub(lambda m: f"<!-- table: {m[1]} -->\n{TABLES[m[1]]()}\n<!-- /table -->", text)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--update"]:
        for path in argv[1:]:
            Path(path).write_text(render(Path(path).read_text()))
        return 0
    for name in argv or TABLES:
        if name not in TABLES:
            print(f"tables.py: error: no table {name!r}; known: {', '.join(TABLES)}", file=sys.stderr)
            return 2
        print(f"<!-- table: {name} -->\n{TABLES[name]()}\n<!-- /table -->\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
