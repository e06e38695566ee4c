"""Calibration-seed spread: the same comparison repeated with several calibration seeds.

The seed picks which windows of the calibration text calibrate (`CalibSpec.seed`). A GPTQ-style
solver fits its weights to those tokens, so its result moves with the seed; two methods whose
difference is inside that movement cannot be ranked on one seed. `compare_seeds` runs
`dpq.eval.compare.compare` once per seed (the float model loaded and evaluated once), and
`summarize` turns any set of comparisons that differ only in the seed (including ones written by
separate `dpq compare --seed N` runs) into per-method values, mean and spread (max - min).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from collections.abc import Callable
from pathlib import Path

from dpq.config import CalibSpec
from dpq.eval.compare import FLOAT, _check_methods, compare, load_float
from dpq.eval.tasks import resolve_tasks

_MEASURED_WITH = {"wikitext2_ppl": ("ppl", "seq_len"), "average": ("limit", "num_fewshot")}
"""Per metric, the evaluation settings that must agree for values to be compared (besides windows / tasks)."""

METRICS = tuple(_MEASURED_WITH)
"""The per-method figures summarized over seeds: perplexity (lower is better), average accuracy (higher)."""


def _seed(comparison: dict) -> int:
    calib = (comparison.get("quant_kwargs") or {}).get("calib") or {}
    seed = calib.get("seed", (comparison.get("calibration") or {}).get("seed"))
    if seed is None:
        raise ValueError("a comparison without a calibration seed (no quant_kwargs.calib.seed): "
                         "pass the JSON that `dpq compare` wrote")
    return int(seed)


def _settings_but_seed(comparison: dict) -> dict:
    """The quantization settings with the seed removed (older files lack skip_first, which was 0)."""
    qk = copy.deepcopy(comparison.get("quant_kwargs") or {})
    calib = {"skip_first": 0, **(qk.get("calib") or {})}
    calib.pop("seed", None)
    qk["calib"] = calib
    return qk


def _measured_with(result: dict, metric: str) -> dict:
    """How `metric` of one evaluate dict was measured: perplexity windows, or the tasks; and the settings."""
    what = {"windows": result.get("windows")} if metric == "wikitext2_ppl" else {"tasks": sorted(result.get("tasks", {}))}
    s = result.get("settings", {})
    return {**what, **{k: s.get(k) for k in _MEASURED_WITH[metric]}}


def _stats(values: dict[int, float]) -> dict:
    xs = list(values.values())
    return {
        "values": {str(k): v for k, v in sorted(values.items())},
        "n": len(xs),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "max": max(xs),
        "spread": max(xs) - min(xs),
        "sd": statistics.stdev(xs) if len(xs) > 1 else None,
    }


def summarize(comparisons: list[dict]) -> dict:
    """Per-method mean and spread over calibration seeds of several `compare` dicts.

    The comparisons must be of one model with the same quantization settings except the seed,
    and each metric must have been measured the same way in all of them (same perplexity
    windows, same tasks and limit); otherwise ValueError names the difference. The same method
    and seed may appear twice only with the same figures. The float model does not depend on the
    seed: its values are reported as measured.

    Returns {"model", "methods", "seeds", "quant_kwargs" (without the seed), "eval": {metric:
    settings}, "metrics": {method: {metric: {"values": {seed: x}, "n", "mean", "min", "max",
    "spread", "sd"}}}, "order": {seed: [methods by perplexity, best first]}, "complete"}.
    """
    if not comparisons:
        raise ValueError("no comparisons to summarize")
    model = comparisons[0].get("model")
    reference = _settings_but_seed(comparisons[0])
    values: dict[str, dict[str, dict[int, float]]] = {}
    how: dict[str, dict] = {}
    methods: list[str] = []
    seeds: list[int] = []
    for comp in comparisons:
        if comp.get("model") != model:
            raise ValueError(f"comparisons of different models ({model}, {comp.get('model')}): summarize one model")
        if _settings_but_seed(comp) != reference:
            raise ValueError(f"comparisons with different quantization settings: {reference} vs "
                             f"{_settings_but_seed(comp)}; only the calibration seed may differ")
        seed = _seed(comp)
        seeds += [seed] if seed not in seeds else []
        for method, res in comp.get("results", {}).items():
            methods += [method] if method not in methods else []
            for metric in METRICS:
                x = res.get(metric)
                if x is None:
                    continue
                settings = _measured_with(res, metric)
                if how.setdefault(metric, settings) != settings:
                    raise ValueError(f"{method} (seed {seed}): {metric} measured with {settings}, another "
                                     f"comparison with {how[metric]}; rerun with the same evaluation options")
                per_seed = values.setdefault(method, {}).setdefault(metric, {})
                if seed in per_seed and abs(per_seed[seed] - x) > 1e-9 * max(1.0, abs(x)):
                    raise ValueError(f"two different {metric} for {method} with seed {seed} "
                                     f"({per_seed[seed]} and {x}): keep one of the two files")
                per_seed[seed] = x
    seeds.sort()
    metrics = {m: {k: _stats(v) for k, v in values[m].items()} for m in methods if m in values}
    order = {}
    for seed in seeds:
        ppl = {m: values[m]["wikitext2_ppl"][seed] for m in methods
               if m != FLOAT and seed in values.get(m, {}).get("wikitext2_ppl", {})}
        if ppl:
            order[str(seed)] = sorted(ppl, key=ppl.get)
    quantized = [m for m in methods if m != FLOAT]
    complete = all(all(s in values.get(m, {}).get(k, {}) for s in seeds) for m in quantized for k in how)
    return {"model": model, "methods": methods, "seeds": seeds, "quant_kwargs": reference, "eval": how,
            "metrics": metrics, "order": order, "complete": complete}


def compare_seeds(
    model_name: str | None,
    methods,
    seeds,
    quant_kwargs: dict | None = None,
    eval_kwargs: dict | None = None,
    *,
    device: str = "cpu",
    save_dir: str | None = None,
    progress: bool = True,
    quantize_fn: Callable | None = None,
    loader: Callable | None = None,
    dtype="float32",
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """`compare` once per calibration seed, then `summarize`.

    seeds: distinct non-negative ints. quant_kwargs["calib"] (a CalibSpec) gives everything but the
    seed. The float model is loaded once and, when "bf16" is listed, evaluated with the first seed
    only (it does not depend on the seed). save_dir: checkpoints go to save_dir/seed-<s>/<method>
    and are reused on a rerun (see `compare`). on_result(partial) after each method, with partial
    the return value so far.
    Returns summarize(...) plus "runs": [compare dict per seed].
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds: give at least one, e.g. --seeds 0,1,2")
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {','.join(map(str, seeds))}: use distinct non-negative integers")
    methods = _check_methods(methods)
    resolve_tasks((eval_kwargs or {}).get("tasks", ()))  # fail on a bad task name before loading anything
    if not any(m != FLOAT for m in methods):
        raise ValueError("a seed spread needs at least one quantization method (the float model has no seed)")
    quant_kwargs = dict(quant_kwargs or {})
    base_calib: CalibSpec = quant_kwargs.get("calib") or CalibSpec()
    *loaded, reference = load_float(model_name, loader, dtype)
    runs: list[dict] = []  # the finished seeds' comparisons

    def report(so_far: dict) -> None:
        if on_result is not None:
            on_result({**summarize(runs + [so_far]), "runs": runs + [so_far]})

    for i, seed in enumerate(seeds):
        kwargs = {**quant_kwargs, "calib": dataclasses.replace(base_calib, seed=seed)}
        these = [m for m in methods if i == 0 or m != FLOAT]
        runs.append(compare(reference, these, kwargs, eval_kwargs, device=device, quantize_fn=quantize_fn,
                            loader=lambda name: loaded, progress=progress,
                            save_dir=None if save_dir is None else str(Path(save_dir) / f"seed-{seed}"),
                            on_result=report))
    return {**summarize(runs), "runs": runs}


def _cell(stats: dict | None, seed: str, digits: int, scale: float) -> str:
    if not stats or seed not in stats["values"]:
        return "-"
    return f"{scale * stats['values'][seed]:.{digits}f}"


def to_markdown(summary: dict) -> str:
    """Per metric, a table: method, its value per seed, mean, spread (max - min); then the ordering per seed.

    Perplexity to 3 decimals; average accuracy in % to 1 decimal.
    """
    seeds = [str(s) for s in summary["seeds"]]
    lines: list[str] = []
    for metric, title, digits, scale in (("wikitext2_ppl", "wikitext2 ppl", 3, 1.0),
                                         ("average", "average acc (%)", 1, 100.0)):
        if metric not in summary["eval"]:
            continue
        header = ["method"] + [f"{title}, seed {s}" for s in seeds] + ["mean", "spread"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in summary["methods"]:
            st = summary["metrics"].get(method, {}).get(metric)
            if not st:
                continue
            cells = [method] + [_cell(st, s, digits, scale) for s in seeds]
            spread = f"{scale * st['spread']:.{digits}f}" if st["n"] > 1 else "-"
            cells += [f"{scale * st['mean']:.{digits}f}", "(no seed)" if method == FLOAT else spread]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    qk = summary["quant_kwargs"]
    calib = qk.get("calib", {})
    ev = summary["eval"]
    what = []
    if "wikitext2_ppl" in ev:
        what.append(f"perplexity windows {ev['wikitext2_ppl']['windows']} of {ev['wikitext2_ppl']['seq_len']} tokens")
    if "average" in ev:
        a = ev["average"]
        what.append(f"average of {', '.join(t for t in a['tasks'] if t != 'mmlu')} (limit {a['limit'] or 'none'})")
    lines.append(f"Model {summary['model']}; {'; '.join(what)}; calibration {calib.get('source')} "
                 f"{calib.get('samples')} x {calib.get('seq_len')} tokens, seeds {', '.join(seeds)}; "
                 f"spread = max - min over the seeds.")
    for seed, order in summary["order"].items():
        lines.append(f"- seed {seed}, perplexity best first: {' < '.join(order)}")
    if not summary["complete"]:
        lines.append("- incomplete: some methods lack some seeds")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path) -> Path:
    """Per-method mean over seeds with the min-max range as error bars (perplexity, average accuracy)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from dpq.eval.report import save_figure, zoom_y  # noqa: PLC0415

    panels = [(m, t, s) for m, t, s in (("wikitext2_ppl", "WikiText-2 perplexity (lower is better)", 1.0),
                                        ("average", "average accuracy, % (higher is better)", 100.0))
              if m in summary["eval"]]
    if not panels:
        raise ValueError("the summary has neither perplexity nor task accuracies to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (metric, title, scale) in zip(axes[0], panels):
        rows = [(m, summary["metrics"][m][metric]) for m in summary["methods"]
                if metric in summary["metrics"].get(m, {})]
        xs = range(len(rows))
        means = [scale * st["mean"] for _, st in rows]
        err = [[scale * (st["mean"] - st["min"]) for _, st in rows], [scale * (st["max"] - st["mean"]) for _, st in rows]]
        ax.bar(xs, means, yerr=err, capsize=4,
               color=["tab:gray" if m == FLOAT else "tab:blue" for m, _ in rows])
        for x, (_, st) in zip(xs, rows):
            ax.scatter([x] * st["n"], [scale * v for v in st["values"].values()], color="black", s=8, zorder=3)
        ax.set_xticks(list(xs), [m for m, _ in rows], rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        zoom_y(ax, min(scale * st["min"] for _, st in rows), max(scale * st["max"] for _, st in rows))
    fig.suptitle(f"{summary['model']}: seeds {', '.join(map(str, summary['seeds']))} (bars: mean, range: min-max)",
                 fontsize=11)
    return save_figure(fig, path)
