"""Merge `dpq compare` results into one table and check the accuracy targets.

    python benchmarks/accuracy_targets.py RESULT.json [RESULT.json ...] \
        --json benchmarks/results/accuracy_targets.json --markdown benchmarks/results/accuracy_targets.md

Each RESULT.json is the `--json` output of one `dpq compare` run (one model, one FP8 range F).
Rows are (model, F, method); the float model ("bf16") of a model serves as the baseline for
every F of that model. The targets, checked per (model, F) where the needed methods are present:

  ordering   ppl(dpq-gar) < ppl(naive-w4a8) < ppl(rtn-w4a8)
  ppl ratio  (ppl(dpq-gar) - ppl(bf16)) <= 1.1 x (ppl(gptq-w4a16) - ppl(bf16))
  accuracy   |average acc(dpq-gar) - average acc(bf16)| <= 1 point (only with task results;
             the change is paired, example by example, with its standard error, where both
             runs logged per-example results on the same examples)

The thresholds live in src/dpq/eval/targets.toml ([paper]; `dpq.eval.targets.check_paper`).
A missing method or result makes a target "not measured", never a pass. Perplexities are compared
only on the same windows: a target uses the most windows that all its methods were measured on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpq.eval.report import paired_average_difference
from dpq.eval.report import to_markdown as report_markdown
from dpq.eval.run import task_average
from dpq.eval.targets import FLOAT, W4A8, _windows_used, check_paper
from dpq.eval.tasks import TASKS



def _fp8_max(result: dict) -> float | None:
    return (result.get("quant_kwargs") or {}).get("fp8_max")


def merged(results: list[dict]) -> dict[tuple, dict]:
    """One evaluate dict per (model, F, method), merged over the inputs.

    F is None for the float model and the W4A16 methods (they do not depend on it). Perplexity is
    taken from the input that used the most windows; each task from the first input that has it;
    the average is recomputed over the merged tasks (MMLU apart, the rule of `evaluate`); the
    settings are those of the first input with tasks other than MMLU. `meta` keeps the limits of
    the tasks and of MMLU, the quantization time, the calibration and the group size.
    """
    out: dict[tuple, dict] = {}
    task_settings: set[tuple] = set()  # keys whose settings come from a run of tasks other than MMLU
    for res in results:
        f = _fp8_max(res)
        for method, r in res["results"].items():
            key = (res["model"], f if method in W4A8 else None, method)
            e = out.setdefault(key, {"model": res["model"], "method": method, "ppl_by_windows": {},
                                     "tasks": {}, "settings": {}, "meta": {"limit": None, "mmlu_limit": None, "quantize_s": None,
                                              "calibration": None, "group_size": None}})
            meta, tasks = e["meta"], r.get("tasks") or {}
            if r.get("wikitext2_ppl") is not None:
                e["ppl_by_windows"].setdefault(str(r.get("windows")), r["wikitext2_ppl"])
            settings = r.get("settings") or {}
            for name, t in tasks.items():
                e["tasks"].setdefault(name, t)
            if any(name != "mmlu" for name in tasks) and key not in task_settings:
                task_settings.add(key)
                meta["limit"] = settings.get("limit")
                e["settings"] = settings  # the footer's limit is that of these tasks
            if "mmlu" in tasks and meta["mmlu_limit"] is None:
                meta["mmlu_limit"] = settings.get("limit")
            for k, v in (("quantize_s", settings.get("timings", {}).get("quantize_s")),
                         ("calibration", res.get("calibration")),
                         ("group_size", (res.get("quant_kwargs") or {}).get("group_size"))):
                if meta[k] is None:
                    meta[k] = v
            if not e["settings"] and settings:
                e["settings"] = settings
    order = list(TASKS)
    for e in out.values():
        most = max(e["ppl_by_windows"], key=_windows_used, default=None)  # the first on a tie
        e["windows"], e["wikitext2_ppl"] = most, e["ppl_by_windows"].get(most)
        e["tasks"] = dict(sorted(e["tasks"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        e["average"] = task_average(e["tasks"])
    return out


def task_tables(results: list[dict]) -> str:
    """Per model, the per-task accuracy table (float first) with the paired change of the average."""
    parts = []
    evals = merged(results)
    for model in dict.fromkeys(res["model"] for res in results):
        keys = [k for k, e in evals.items() if k[0] == model and e["tasks"]]
        keys.sort(key=lambda k: k[2] != FLOAT)  # float first, then the order of the inputs
        # perplexity stays in the main table: the methods' windows may differ, so no deltas here
        rows_ = [{**evals[k], "wikitext2_ppl": None, "windows": None,
                  "method": k[2] if k[1] in (None, 448.0) else f"{k[2]} (F={int(k[1])})"} for k in keys]
        if rows_:
            parts.append(f"### {model}\n\n" + report_markdown(rows_))
    return "\n".join(parts)


def rows(results: list[dict]) -> list[dict]:
    """One row per (model, F, method), merged over the inputs (see `merged`): perplexity from one
    run and tasks from others make one row. The float model's merged tasks are the baseline of the
    paired change, for every F."""
    evals = merged(results)
    out = []
    for (model, f, method), e in evals.items():
        base = evals.get((model, None, FLOAT))
        paired = (paired_average_difference(base, e)
                  if base is not None and base["tasks"] and method != FLOAT else None)
        meta = e["meta"]
        out.append({
            "model": model, "fp8_max": f, "method": method,
            "wikitext2_ppl": e["wikitext2_ppl"], "windows": e["windows"],
            "ppl_by_windows": e["ppl_by_windows"],
            "average": e["average"], "mmlu": (e["tasks"].get("mmlu") or {}).get("acc"),
            "avg_delta_paired": None if paired is None else paired["delta"],
            "avg_delta_stderr": None if paired is None else paired["stderr"],
            "limit": meta["limit"], "mmlu_limit": meta["mmlu_limit"], "quantize_s": meta["quantize_s"],
            "calibration": meta["calibration"], "group_size": meta["group_size"],
        })
    return out


def check(table: list[dict]) -> list[dict]:
    """The targets of the module doc, per (model, F): `dpq.eval.targets.check_paper` with the
    thresholds of src/dpq/eval/targets.toml."""
    return check_paper(table)


def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def _pm(se):
    return "" if se is None else f" +/- {se:.2f}"


def _mmlu(r: dict) -> str:
    if r["mmlu"] is None:
        return "-"
    lim = r.get("mmlu_limit")
    return _fmt(100 * r["mmlu"], 1) + ("" if lim is None else f" ({lim}/subject)")


def _on(target: dict) -> str:
    """The perplexity windows a target was checked on, all methods on the same ones."""
    return "" if not target.get("windows") else f" ({target['windows']} windows)"


def _verdict(h):
    return "not measured" if h is None else ("yes" if h else "NO")


def to_markdown(table: list[dict], targets: list[dict]) -> str:
    lines = ["| model | F | method | wikitext2 ppl | windows | avg acc | avg change (paired) | mmlu | limit | quantize s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(
            f"| {r['model']} | {'-' if r['fp8_max'] is None else int(r['fp8_max'])} | {r['method']} | "
            f"{_fmt(r['wikitext2_ppl'])} | {r['windows'] or '-'} | "
            f"{'-' if r['average'] is None else _fmt(100 * r['average'], 1)} | "
            f"{'-' if r['avg_delta_paired'] is None else _fmt(100 * r['avg_delta_paired'], 2) + _pm(100 * r['avg_delta_stderr'])} | "
            f"{_mmlu(r)} | {r['limit'] or '-'} | {_fmt(r['quantize_s'], 0)} |")
    lines += ["", "| model | F | dpq-gar < naive < rtn (ppl) | ppl increase dpq-gar / gptq-w4a16 (<= 1.1) | "
              "avg acc dpq-gar - float (within 1 pt) |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(
            f"| {t['model']} | {int(t['fp8_max'])} | {_verdict(t['ordering']['holds'])}{_on(t['ordering'])} | "
            f"{_fmt(t['ppl_ratio']['value'], 2)}: {_verdict(t['ppl_ratio']['holds'])}{_on(t['ppl_ratio'])} | "
            f"{_fmt(t['accuracy']['delta_points'], 2)}{_pm(t['accuracy']['paired_stderr_points'])}: "
            f"{_verdict(t['accuracy']['holds'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="dpq compare --json outputs")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    a = p.parse_args(argv)
    loaded = []
    for path in a.results:
        try:
            res = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"{path}: cannot read it as JSON ({e}); give the --json output of `dpq compare`")
        if not isinstance(res, dict) or "results" not in res:
            p.error(f"{path}: not a `dpq compare --json` output (no 'results')")
        loaded.append(res)
    table = rows(loaded)
    targets = check(table)
    md = to_markdown(table, targets)
    tables = task_tables(loaded)
    if tables:
        md += "\n\n## Tasks\n\n" + tables
    print(md)
    if a.json:
        Path(a.json).write_text(json.dumps({"inputs": a.results, "rows": table, "targets": targets}, indent=2))
    if a.markdown:
        Path(a.markdown).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
