"""Readers of dpq's nine local task files: each returns the examples of its file in the form
lm-eval's built-in task renders them (same prompt text, choices and gold index).
dpq.eval.tasks writes them as .jsonl for its task YAMLs.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from dpq.io.data import DataError, data_dir


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path} is missing: set DPQ_DATA_DIR to the data folder holding tasks/")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from e
    return rows


def _task_file(root: Path | None, name: str) -> Path:
    root = root if root is not None else data_dir(required=True)
    return root / "tasks" / name


def _mc(query: str, choices: list, gold: int) -> dict:
    return {"query": query, "choices": [str(c) for c in choices], "gold": int(gold)}


def read_piqa(root: Path | None = None) -> list[dict]:
    """PIQA validation: the file's query is "Question: {goal}\\n"; lm-eval adds "Answer:"."""
    return [_mc(r["query"] + "Answer:", r["choices"], r["gold"]) for r in _read_jsonl(_task_file(root, "piqa.jsonl"))]


def _read_arc(root: Path | None, file: str) -> list[dict]:
    # The file's query is "Question: {question}"; lm-eval's is "Question: {question}\nAnswer:".
    return [_mc(r["query"] + "\nAnswer:", r["choices"], r["gold"]) for r in _read_jsonl(_task_file(root, file))]


def read_arc_easy(root: Path | None = None) -> list[dict]:
    return _read_arc(root, "arc_easy.jsonl")


def read_arc_challenge(root: Path | None = None) -> list[dict]:
    return _read_arc(root, "arc_challenge.jsonl")


def read_boolq(root: Path | None = None) -> list[dict]:
    """BoolQ validation: "Passage: {p}\\nQuestion: {q}?" becomes lm-eval's "{p}\\nQuestion: {q}?\\nAnswer:"."""
    out = []
    for r in _read_jsonl(_task_file(root, "boolq.jsonl")):
        query = r["query"].removeprefix("Passage: ")
        out.append(_mc(query + "\nAnswer:", r["choices"], r["gold"]))
    return out


def read_openbookqa(root: Path | None = None) -> list[dict]:
    """OpenBookQA test: the prompt is the question stem, as in lm-eval."""
    return [_mc(r["query"], r["choices"], r["gold"]) for r in _read_jsonl(_task_file(root, "openbook_qa.jsonl"))]


def read_winogrande(root: Path | None = None) -> list[dict]:
    """WinoGrande (xl) validation: {context_options: [sentence up to the blank + option], continuation, gold}."""
    return [
        {"context_options": list(r["context_options"]), "continuation": r["continuation"], "gold": int(r["gold"])}
        for r in _read_jsonl(_task_file(root, "winogrande.jsonl"))
    ]


def read_lambada(root: Path | None = None) -> list[dict]:
    """LAMBADA (OpenAI) test: {context, continuation}; the text is context + " " + continuation."""
    return [
        {"context": r["context"], "continuation": r["continuation"]}
        for r in _read_jsonl(_task_file(root, "lambada_openai.jsonl"))
    ]


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag text cleaning: WikiHow bracket artifacts out, double spaces in."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(root: Path | None = None) -> list[dict]:
    """HellaSwag validation from the 6-line text format: "label: context", gold index, 4 endings."""
    path = _task_file(root, "hellaswag_val.txt")
    if not path.is_file():
        raise DataError(f"{path} is missing: set DPQ_DATA_DIR to the data folder holding tasks/")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) % 6:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of 6 (label: context, gold, 4 endings)")
    out = []
    for i in range(0, len(lines), 6):
        ctx, gold, endings = lines[i], lines[i + 1], lines[i + 2 : i + 6]
        if not gold.strip().isdigit() or not 0 <= int(gold) < 4:
            raise DataError(f"{path}:{i + 2}: expected a gold index 0-3, got {gold!r}")
        out.append(_mc(hellaswag_preprocess(ctx), [hellaswag_preprocess(e) for e in endings], int(gold)))
    return out


def mmlu_query(question: str, choices: list[str]) -> str:
    """lm-eval's MMLU prompt: the question, the lettered choices, then "Answer:"."""
    lines = [question.strip()] + [f"{letter}. {c}" for letter, c in zip("ABCD", choices)]
    return "\n".join(lines) + "\nAnswer:"


def _read_mmlu_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        choices = [r[f"choice{k}"] for k in range(4)]
        out.append({"query": mmlu_query(r["question"], choices), "gold": int(r["answer"])})
    return out


def read_mmlu(root: Path | None = None, split: str = "test") -> dict[str, list[dict]]:
    """MMLU, {subject: [{query, gold}]} for the 57 subjects of `split` ("test" or "dev")."""
    folder = _task_file(root, "mmlu") / split
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise DataError(f"no MMLU csv files in {folder}: set DPQ_DATA_DIR to the data folder holding tasks/mmlu")
    return {f.name.removesuffix(f"_{split}.csv"): _read_mmlu_csv(f) for f in files}
