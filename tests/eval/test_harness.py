"""Any lm-eval task: `dpq eval --tasks NAME --include-path DIR` and `python -m dpq.lm_eval` on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import dpq
from dpq.cli import main
from dpq.eval.tasks import TaskError, resolve_tasks

ROWS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Berlin", "Rome"], "gold": 0},
    {"question": "What is the capital of Germany?", "choices": ["Madrid", "Berlin", "Rome"], "gold": 1},
    {"question": "What is the capital of Italy?", "choices": ["Paris", "Lisbon", "Rome"], "gold": 2},
    {"question": "Which one is a colour?", "choices": ["green", "seven", "under"], "gold": 0},
    {"question": "Which animal barks?", "choices": ["cat", "dog", "fish"], "gold": 1},
]

YAML = """task: my_quiz
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("my-tasks")
    (d / "quiz.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "my_quiz.yaml").write_text(YAML.format(data=d / "quiz.jsonl"))
    return d


@pytest.fixture(scope="module")
def checkpoint(tiny_rtn_checkpoint):
    return tiny_rtn_checkpoint


def _expected_correct(path) -> list[int]:
    """lm-eval's multiple-choice acc computed by hand: argmax of log P(" " + choice | prompt)."""
    model, tok = dpq.load(path)
    out = []
    for r in ROWS:
        ctx = f"Question: {r['question']}\nAnswer:"
        scores = []
        for c in r["choices"]:
            n_ctx = len(tok(ctx).input_ids)
            ids = tok(ctx + " " + c, return_tensors="pt").input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            tgt = ids[0, n_ctx:]
            scores.append(float(logp[n_ctx - 1:].gather(1, tgt[:, None]).sum()))
        out.append(int(max(range(len(scores)), key=scores.__getitem__) == r["gold"]))
    return out


def test_dpq_eval_runs_a_user_task(checkpoint, task_dir, tmp_path):
    out = tmp_path / "res.json"
    assert main(["eval", str(checkpoint), "--ppl", "none", "--tasks", "my_quiz", "--include-path", str(task_dir),
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())["tasks"]["my_quiz"]
    want = _expected_correct(checkpoint)
    assert res["n"] == len(ROWS) and res["correct"] == want
    assert res["acc"] == pytest.approx(sum(want) / len(want))


def test_unknown_task_is_refused_before_loading(checkpoint, task_dir, capsys, monkeypatch):
    import dpq.api

    monkeypatch.setattr(dpq.api, "load_any", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["eval", str(checkpoint), "--tasks", "my_quizz", "--include-path", str(task_dir)]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'my_quizz'" in err and "did you mean my_quiz" in err
    assert main(["eval", str(checkpoint), "--tasks", "my_quiz", "--include-path", str(task_dir / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_local_names_stay_local():
    """dpq's nine names resolve to its offline tasks without touching lm-eval's index; "all" is those nine."""
    specs = resolve_tasks("PIQA,mmlu")
    assert [s.name for s in specs] == ["piqa", "mmlu"] and all(s.reader is not None for s in specs)
    assert len(resolve_tasks("all")) == 9
    with pytest.raises(TaskError, match="not a directory"):
        resolve_tasks("x", include_path="/definitely/not/here")


def test_lm_eval_entry_on_a_dpq_checkpoint(checkpoint, task_dir, tmp_path):
    """`python -m dpq.lm_eval` is lm-eval's own command line with dpq's quantizer registered."""
    out = tmp_path / "lm-eval-out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    res = subprocess.run(
        [sys.executable, "-m", "dpq.lm_eval", "--model", "hf", "--model_args", f"pretrained={checkpoint}",
         "--tasks", "my_quiz", "--include_path", str(task_dir), "--device", "cpu", "--batch_size", "1",
         "--output_path", str(out)],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["my_quiz"]
    want = _expected_correct(checkpoint)
    assert results["acc,none"] == pytest.approx(sum(want) / len(want))
