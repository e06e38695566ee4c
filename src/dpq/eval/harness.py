"""Any lm-evaluation-harness task by name: lm-eval's own tasks and the user's task YAMLs (--include-path).

dpq's nine local tasks (dpq.eval.tasks.TASKS) read the local data directory offline; every other
name is looked up in lm-eval's task index (its built-in tasks plus the YAMLs under `include_path`)
and runs as lm-eval runs it: its data set loads as lm-eval loads it (a hub data set needs network
access or a filled cache; a `dataset_path: json` task over a local .jsonl does not).

Result of one task (or group) name, as `run_tasks` returns it:
    {metric: value for each metric lm-eval reports (filter "none" by its bare name, others
     as "metric,filter")}, n (examples scored), correct (0/1 per example, when the task has acc),
     subtasks ({name: metrics} for a group), note
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path


class HarnessTaskError(ValueError):
    """A task name lm-eval does not know, or an include path that is not a directory."""


def check_include_path(include_path: str | Path | None) -> str | None:
    """The include path as a string, refused when it is not a directory."""
    if include_path is None:
        return None
    p = Path(include_path)
    if not p.is_dir():
        raise HarnessTaskError(f"--include-path {p}: not a directory; give the folder holding your task YAMLs")
    if not any(p.rglob("*.yaml")) and not any(p.rglob("*.yml")):
        raise HarnessTaskError(f"--include-path {p}: the folder holds no .yaml task definitions")
    return str(p.resolve())


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None, defaults: bool = True):
    """lm-eval's TaskManager over `include_path` plus (defaults) its built-in tasks; indexing the
    built-in ones takes 10-40 s, so it is done once per process and path."""
    from lm_eval.tasks import TaskManager  # noqa: PLC0415 - heavy import

    return TaskManager(include_path=include_path, include_defaults=defaults)


def manager_for(names: list[str], include_path: str | None):
    """The TaskManager that knows every name: the include path's own index when it is enough
    (fast), else the one with lm-eval's built-in tasks too."""
    if include_path is not None:
        own = task_manager(include_path, defaults=False)
        if all(n in own.all_tasks for n in names):
            return own
    return task_manager(include_path)


def check_names(names: list[str], include_path: str | None, local: list[str]) -> None:
    """Refuse, before any model is loaded, names that are neither dpq's local tasks nor lm-eval's."""
    if not names:
        return
    known = set(manager_for(names, include_path).all_tasks)
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, sorted(known) + local, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = "lm-eval's tasks" + (f" or {include_path}" if include_path else "")
            raise HarnessTaskError(
                f"unknown task {n!r}: use one of dpq's local tasks ({', '.join(local)}), all, or a task in "
                f"{where}{hint} (`lm-eval ls tasks` lists lm-eval's; give your own task YAMLs with "
                "--include-path DIR)")


def _metrics(res: dict) -> dict:
    out = {}
    for key, value in res.items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt == "none" else key] = float(value)
    return out


def summarize(name: str, out: dict, limit) -> dict:
    """The result entry of one requested task or group name (see the module doc)."""
    results, nsamples = out["results"], out.get("n-samples", {})
    entry = _metrics(results.get(name, {}))
    subtasks = out.get("group_subtasks", {}).get(name, [])
    if subtasks:
        entry["subtasks"] = {s: _metrics(results.get(s, {})) for s in subtasks}
        leaves = [s for s in subtasks if s in nsamples]
        entry["n"] = sum(nsamples[s].get("effective", 0) for s in leaves)
    else:
        entry["n"] = nsamples.get(name, {}).get("effective")
        samples = sorted(out.get("samples", {}).get(name, []) or [], key=lambda x: x["doc_id"])
        correct = [int(round(float(x["acc"]))) for x in samples if "acc" in x]
        if correct and len(correct) == entry["n"]:
            entry["correct"] = correct
    notes = [f"lm-eval task {name}"]
    if limit is not None:
        notes.append(f"limit {limit}")
    entry["note"] = "; ".join(notes)
    return entry


def run(lm, names: list[str], include_path: str | None, *, limit, num_fewshot: int) -> dict[str, dict]:
    """Score lm-eval's `lm` (an HFLM) on lm-eval task names; {name: entry}."""
    import lm_eval  # noqa: PLC0415

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager_for(names, include_path),
        log_samples=True,
        bootstrap_iters=0,
    )
    return {n: summarize(n, out, limit) for n in names}
