"""Zero-shot tasks with lm-evaluation-harness 0.4.x, read from the local data directory.

Each task has a reader that returns the examples of its local file in the form
lm-eval's built-in task renders them (same prompt text, choices and gold index).
`run_tasks` writes those examples as .jsonl next to the packaged task YAMLs
(`dpq/eval/tasks/*.yaml`, task names prefixed `dpq_` so they never clash with
lm-eval's), points lm-eval at that folder with `TaskManager(include_path=...)`,
and scores the in-memory model with `HFLM` + `simple_evaluate`.

Without a local data directory and with network allowed, the built-in lm-eval
tasks (downloaded from the hub) are used instead.

Any other name is an lm-eval task (or group, or tag) run as lm-eval runs it, including the
user's own task YAMLs under `include_path` (dpq.eval.harness).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


TEMPLATE_DIR = Path(__file__).parent / "tasks"


class TaskError(ValueError):
    """An unknown task name or unusable task settings; the message lists what is allowed."""


from dpq.eval.task_readers import (  # noqa: E402 - the readers, re-exported
    hellaswag_preprocess,
    mmlu_query,
    read_arc_challenge,
    read_arc_easy,
    read_boolq,
    read_hellaswag,
    read_lambada,
    read_mmlu,
    read_openbookqa,
    read_piqa,
    read_winogrande,
)

# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TaskSpec:
    name: str  # what users type
    builtin: str  # lm-eval's built-in task (the online fallback)
    reader: Callable[..., list | dict] | None  # None: an lm-eval task run as lm-eval runs it
    note: str | None = None  # where the local prompt or data differ from lm-eval's default

    @property
    def local(self) -> str:
        return f"dpq_{self.name}"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("piqa", "piqa", read_piqa),
        TaskSpec(
            "arc_easy",
            "arc_easy",
            read_arc_easy,
            "local copy (llm-foundry) has exactly 4 choices per question",
        ),
        TaskSpec(
            "arc_challenge",
            "arc_challenge",
            read_arc_challenge,
            "local copy (llm-foundry) has exactly 4 choices per question",
        ),
        TaskSpec("boolq", "boolq", read_boolq),
        TaskSpec("openbookqa", "openbookqa", read_openbookqa),
        TaskSpec("winogrande", "winogrande", read_winogrande, "partial scoring as lm-eval's winogrande"),
        TaskSpec("lambada", "lambada_openai", read_lambada),
        TaskSpec(
            "hellaswag",
            "hellaswag",
            read_hellaswag,
            "from the 6-line text file: the context is not re-capitalized (lm-eval capitalizes ctx_b); "
            "otherwise lm-eval's preprocessing",
        ),
        TaskSpec("mmlu", "mmlu", read_mmlu, "acc is the mean over all questions (lm-eval's weight_by_size)"),
    )
}
"""User task names -> specs, in the paper's order (MMLU last)."""


def resolve_tasks(names, include_path: str | None = None) -> list[TaskSpec]:
    """Specs for user task names (a list, or one comma-separated string; "all" is the nine local tasks).

    dpq's local task names keep their local data; any other name must be an lm-eval task, group or
    tag (built in, or a YAML under `include_path`), else TaskError names the closest ones.
    """
    from dpq.eval import harness  # noqa: PLC0415

    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    names = [n.strip() for n in names]
    names = [n.lower() if n.lower() in TASKS or n.lower() == "all" else n for n in names]
    if "all" in names:
        names = list(TASKS) + [n for n in names if n != "all" and n not in TASKS]
    try:
        include = harness.check_include_path(include_path)
        harness.check_names([n for n in names if n not in TASKS], include, list(TASKS))
    except harness.HarnessTaskError as e:
        raise TaskError(str(e)) from None
    specs = []
    for n in names:
        spec = TASKS.get(n) or TaskSpec(n, n, None)
        if spec not in specs:
            specs.append(spec)
    return specs


from dpq.eval.task_render import local_data_root, render_tasks, task_folder  # noqa: E402, F401 - re-exported


# ----------------------------------------------------------------------------- running


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _metric(res: dict, name: str) -> float | None:
    v = res.get(f"{name},none")
    return float(v) if isinstance(v, (int, float)) else None


def _per_doc_correct(task_samples: list[dict] | None) -> list[int]:
    """acc of each logged example (0 or 1), ordered by doc_id; [] when none were logged."""
    if not task_samples:
        return []
    return [int(round(float(x["acc"]))) for x in sorted(task_samples, key=lambda x: x["doc_id"]) if "acc" in x]


def _summarize(spec: TaskSpec, lm_name: str, out: dict, local: bool, num_fewshot: int, limit) -> dict:
    results, nsamples = out["results"], out.get("n-samples", {})
    res = results[lm_name]
    entry = {"acc": _metric(res, "acc")}
    if _metric(res, "acc_norm") is not None:
        entry["acc_norm"] = _metric(res, "acc_norm")
    if _metric(res, "perplexity") is not None:
        entry["perplexity"] = _metric(res, "perplexity")
    samples = out.get("samples", {})
    if spec.name == "mmlu":
        prefix = f"{lm_name}_"
        groups = out.get("groups", {})  # the built-in mmlu also reports mmlu_stem, mmlu_humanities, ...
        subjects = {k.removeprefix(prefix): v for k, v in results.items() if k.startswith(prefix) and k not in groups}
        entry["subjects"] = {k: _metric(v, "acc") for k, v in sorted(subjects.items())}
        entry["n"] = sum(nsamples.get(prefix + s, {}).get("effective", 0) for s in subjects)
        per_doc = [c for s in sorted(subjects) for c in _per_doc_correct(samples.get(prefix + s))]
    else:
        entry["n"] = nsamples.get(lm_name, {}).get("effective")
        per_doc = _per_doc_correct(samples.get(lm_name))
    if entry["acc"] is not None and entry["n"] and entry["n"] > 1:
        p = entry["acc"]  # lm-eval's stderr of a mean: sample std / sqrt(n)
        entry["acc_stderr"] = math.sqrt(p * (1.0 - p) / (entry["n"] - 1))
    if per_doc and len(per_doc) == entry["n"]:
        entry["correct"] = per_doc  # 0/1 per example in doc order: paired comparisons between models
    notes = [spec.note] if spec.note and local else []
    if not local:
        notes.append(f"lm-eval built-in task {spec.builtin} (downloaded)")
    if local and num_fewshot and spec.name != "mmlu":
        notes.append("few-shot examples drawn from the evaluated split (the local file is the only split)")
    if limit is not None:
        notes.append(f"limit {limit}" + (" per subject" if spec.name == "mmlu" else ""))
    entry["note"] = "; ".join(notes) or None
    return entry


def run_tasks(
    model,
    tokenizer,
    tasks,
    *,
    limit: int | float | None = None,
    num_fewshot: int = 0,
    batch_size: int | str = 1,
    include_path: str | None = None,
) -> dict[str, dict]:
    """Score an in-memory HF causal LM on `tasks`; {name: {acc, acc_norm?, perplexity?, n, note}}.

    `limit` caps the examples per task (per subject for MMLU; a float < 1 is
    a fraction); `num_fewshot` is the number of in-context examples. Names other
    than the local nine run as lm-eval tasks (with `include_path`'s YAMLs; dpq.eval.harness).
    """
    specs = resolve_tasks(tasks, include_path)
    if not specs:
        return {}
    if num_fewshot < 0:
        raise TaskError(f"num_fewshot={num_fewshot}: use 0 or more")
    if limit is not None and limit <= 0:
        raise TaskError(f"limit={limit}: use a positive number of examples, or None for all")
    local = [s for s in specs if s.reader is not None]
    root = local_data_root() if local else None
    from lm_eval.models.huggingface import HFLM  # noqa: PLC0415 - heavy import, only when tasks run

    from dpq.eval import harness  # noqa: PLC0415

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    results = _run_local(lm, local, root, limit, num_fewshot) if local else {}
    generic = [s.name for s in specs if s.reader is None]
    if generic:
        include = harness.check_include_path(include_path)
        results.update(harness.run(lm, generic, include, limit=limit, num_fewshot=num_fewshot))
    return {s.name: results[s.name] for s in specs}


def _run_local(lm, specs: list[TaskSpec], root: Path | None, limit, num_fewshot: int) -> dict[str, dict]:
    """The local tasks from the data directory, offline (or lm-eval's built-in ones when there is none)."""
    import lm_eval  # noqa: PLC0415
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    if root is not None:
        folder = render_tasks(specs, root)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        names = [s.local for s in specs]
        env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    else:
        manager = TaskManager()
        names = [s.builtin for s in specs]
        env = {}
    with _env(**env):
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=True,  # per-example correctness, for paired comparisons
            bootstrap_iters=0,  # stderr by bootstrap spawns processes; not needed here
        )
    return {s.name: _summarize(s, n, out, root is not None, num_fewshot, limit) for s, n in zip(specs, names)}
