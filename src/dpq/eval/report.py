"""Tables and plots of evaluation results (one `evaluate` dict per method, or a `compare` dict)."""

from __future__ import annotations

import math
from pathlib import Path

from dpq.eval.compare import FLOAT


def _rows(results) -> list[dict]:
    """The per-method evaluate dicts, in order, from a compare dict, a {method: dict} or a list."""
    if isinstance(results, dict) and "results" in results:
        results = results["results"]
    if isinstance(results, dict):
        results = list(results.values())
    rows = list(results)
    if not rows:
        raise ValueError("no results to report")
    return rows


def _baseline(rows: list[dict]) -> dict | None:
    for r in rows:
        if r.get("method") in (FLOAT, "float"):
            return r
    return None


def _fmt(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _delta(x, base, digits: int, scale: float = 1.0) -> str:
    if x is None or base is None:
        return ""
    return f" ({(x - base) * scale:+.{digits}f})"


def paired_average_difference(base: dict, other: dict) -> dict | None:
    """Change of the average accuracy from `base` to `other`, with its paired standard error.

    Both are evaluate dicts whose tasks carry `correct` (0/1 per example, in doc order) for the
    same examples. The average is over the tasks other than MMLU (the rule `evaluate` uses).
    Per task t with n_t examples, d_i = correct_other_i - correct_base_i:
        delta_t = mean(d),  se_t = std(d, ddof=1) / sqrt(n_t)
    and for the average over T tasks: delta = mean_t delta_t, se = sqrt(sum_t se_t^2) / T.
    Pairing removes the spread of example difficulty that both models share, so se is far
    smaller than the unpaired one when the models agree on most examples.

    Returns {"delta", "stderr", "n", "changed", "tasks": {t: {"delta", "stderr", "n", "changed"}}}
    (fractions, not points), or None when a task lacks per-example results or they differ in length.
    """
    names = [t for t in base.get("tasks", {}) if t != "mmlu" and t in other.get("tasks", {})]
    if not names:
        return None
    per_task = {}
    for t in names:
        a, b = base["tasks"][t].get("correct"), other["tasks"][t].get("correct")
        if not a or not b or len(a) != len(b):
            return None
        n = len(a)
        d = [y - x for x, y in zip(a, b)]
        mean = sum(d) / n
        var = sum((v - mean) ** 2 for v in d) / (n - 1) if n > 1 else 0.0
        per_task[t] = {"delta": mean, "stderr": math.sqrt(var / n), "n": n, "changed": sum(v != 0 for v in d)}
    k = len(per_task)
    return {
        "delta": sum(v["delta"] for v in per_task.values()) / k,
        "stderr": math.sqrt(sum(v["stderr"] ** 2 for v in per_task.values())) / k,
        "n": sum(v["n"] for v in per_task.values()),
        "changed": sum(v["changed"] for v in per_task.values()),
        "tasks": per_task,
    }


def to_markdown(results) -> str:
    """A table: method, WikiText-2 perplexity, each task's acc (in %), the average; changes against the float model.

    Changes are in parentheses: perplexity points and accuracy percentage points.
    """
    rows = _rows(results)
    base = _baseline(rows)
    tasks: list[str] = []
    for r in rows:
        tasks += [t for t in r.get("tasks", {}) if t not in tasks]
    has_ppl = any(r.get("wikitext2_ppl") is not None for r in rows)
    has_avg = any(r.get("average") is not None for r in rows)
    header = ["method"] + (["wikitext2 ppl"] if has_ppl else []) + tasks + (["average"] if has_avg else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r.get("method"))]
        if has_ppl:
            b = base.get("wikitext2_ppl") if base and r is not base else None
            cells.append(_fmt(r.get("wikitext2_ppl"), 3) + _delta(r.get("wikitext2_ppl"), b, 3))
        for t in tasks:
            acc = r.get("tasks", {}).get(t, {}).get("acc")
            b = base.get("tasks", {}).get(t, {}).get("acc") if base and r is not base else None
            cells.append(_fmt(None if acc is None else 100 * acc, 1) + _delta(acc, b, 1, 100))
        if has_avg:
            b = base.get("average") if base and r is not base else None
            avg = r.get("average")
            cells.append(_fmt(None if avg is None else 100 * avg, 1) + _delta(avg, b, 1, 100))
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    s = first.get("settings", {})
    notes = sorted({f"{t}: {v['note']}" for r in rows for t, v in r.get("tasks", {}).items() if v.get("note")})
    ppl = (f"perplexity windows {first.get('windows')} of {s.get('seq_len')} tokens"
           if first.get("windows") else "no perplexity")
    tasks = (f"tasks: acc in %, {s.get('num_fewshot', 0)}-shot, limit {s.get('limit') or 'none'}; "
             f"average: {s.get('average')}" if any(r.get("tasks") for r in rows) else "no tasks")
    foot = ["", f"Model {first.get('model')}; {ppl}; {tasks}. Parentheses: change against the float model."]
    foot += [f"- {n}" for n in notes]
    for r in rows:
        paired = paired_average_difference(base, r) if base and r is not base else None
        if paired:
            foot.append(
                f"- {r.get('method')}: average {100 * paired['delta']:+.2f} +/- {100 * paired['stderr']:.2f} points "
                f"against the float model (paired standard error over the same {paired['n']} examples; "
                f"{paired['changed']} answers differ)"
            )
    return "\n".join(lines + foot) + "\n"


def plot(results, path) -> Path:
    """Bar charts of WikiText-2 perplexity and average accuracy per method, written to `path` (png, pdf, svg)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = _rows(results)
    methods = [str(r.get("method")) for r in rows]
    averages = [None if r.get("average") is None else 100 * r["average"] for r in rows]
    panels = [
        ("WikiText-2 perplexity (lower is better)", [r.get("wikitext2_ppl") for r in rows]),
        ("average accuracy, % (higher is better)", averages),
    ]
    panels = [(title, vals) for title, vals in panels if any(v is not None for v in vals)]
    if not panels:
        raise ValueError("the results have neither perplexity nor task accuracies to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (title, vals) in zip(axes[0], panels):
        xs = [i for i, v in enumerate(vals) if v is not None]
        ys = [vals[i] for i in xs]
        bars = ax.bar(xs, ys, color=["tab:gray" if methods[i] == FLOAT else "tab:blue" for i in xs])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        zoom_y(ax, min(ys), max(ys))
    fig.suptitle(str(rows[0].get("model")), fontsize=11)
    return save_figure(fig, path)


def zoom_y(ax, lo: float, hi: float) -> None:
    """Limit the y axis to the data's range with half of it as margin (never below 0)."""
    pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 1.0
    ax.set_ylim(max(0.0, lo - pad), hi + pad)


def save_figure(fig, path) -> Path:
    """Lay out, write (creating the parent directory) and close a matplotlib figure."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
