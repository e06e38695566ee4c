"""Writing the local task data where lm-eval reads it: each task's examples as .jsonl beside a copy
of its packaged YAML (MMLU: one YAML per subject and a group), in a folder keyed by the data
directory ($DPQ_CACHE/lm_eval_tasks/...); unchanged files are left alone so `datasets` keeps its cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dpq.eval.task_readers import read_mmlu
from dpq.eval.tasks import TEMPLATE_DIR, TaskError, TaskSpec
from dpq.io.data import DataError, data_dir


def _offline() -> bool:
    return os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def local_data_root() -> Path | None:
    """The data directory when it holds tasks/; None when there is none and the network may be used."""
    root = data_dir()  # a DPQ_DATA_DIR that is not a directory raises here
    if root is not None and (root / "tasks").is_dir():
        return root
    if _offline():
        raise DataError(
            "no local task data and HF_DATASETS_OFFLINE=1 forbids downloading: set DPQ_DATA_DIR to the "
            f"data folder holding tasks/ (looked in {root if root is not None else 'the default places'})"
        )
    return None


def _write_if_changed(path: Path, text: str) -> None:
    # Unchanged files keep their mtime, so `datasets` reuses its cache across runs.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def task_folder(root: Path) -> Path:
    """Where the rendered YAMLs and converted .jsonl for data dir `root` live ($DPQ_CACHE/lm_eval_tasks/...)."""
    cache = Path(os.environ.get("DPQ_CACHE", Path.home() / ".cache" / "dpq"))
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return cache / "lm_eval_tasks" / key


def render_tasks(specs: list[TaskSpec], root: Path, folder: Path | None = None) -> Path:
    """Write the YAMLs and converted .jsonl of `specs` into a folder for TaskManager(include_path=...)."""
    folder = folder or task_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    if '"' in str(folder) or "\\" in str(folder):
        raise TaskError(f"task folder {folder} holds a quote or backslash: set DPQ_CACHE to a plain path")
    for template in TEMPLATE_DIR.glob("_*.yaml"):
        _write_if_changed(folder / template.name, template.read_text(encoding="utf-8"))
    for spec in specs:
        if spec.name == "mmlu":
            _render_mmlu(root, folder)
            continue
        _write_if_changed(folder / f"{spec.name}.jsonl", _jsonl(spec.reader(root)))
        yaml_text = (TEMPLATE_DIR / f"{spec.local}.yaml").read_text(encoding="utf-8")
        _write_if_changed(folder / f"{spec.local}.yaml", yaml_text.replace("@DIR@", str(folder)))
    return folder


def _render_mmlu(root: Path, folder: Path) -> None:
    import yaml  # noqa: PLC0415 - lm-eval depends on PyYAML

    test, dev = read_mmlu(root, "test"), read_mmlu(root, "dev")
    sub = folder / "mmlu"
    sub.mkdir(exist_ok=True)
    names = []
    for subject, rows in test.items():
        for split, split_rows in (("test", rows), ("dev", dev.get(subject, []))):
            _write_if_changed(sub / f"{subject}_{split}.jsonl", _jsonl(split_rows))
        cfg = {
            "include": "../_dpq_mmlu_template.yaml",
            "task": f"dpq_mmlu_{subject}",
            "task_alias": subject,
            "description": "The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.\n\n",
            "dataset_kwargs": {
                "data_files": {"test": str(sub / f"{subject}_test.jsonl"), "dev": str(sub / f"{subject}_dev.jsonl")}
            },
        }
        _write_if_changed(sub / f"dpq_mmlu_{subject}.yaml", yaml.safe_dump(cfg, sort_keys=False))
        names.append(cfg["task"])
    group = {
        "group": "dpq_mmlu",
        "task": names,
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
        "metadata": {"version": 1.0},
    }
    _write_if_changed(folder / "dpq_mmlu.yaml", yaml.safe_dump(group, sort_keys=False))
