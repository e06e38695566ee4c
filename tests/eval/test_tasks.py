import pytest

from dpq.eval import tasks as T
from dpq.io.data import DataError, data_dir

needs_data = pytest.mark.skipif(
    data_dir() is None or not (data_dir() / "tasks").is_dir(), reason="no local data dir (set DPQ_DATA_DIR)"
)

# Row counts of the standard splits (data/SOURCES.md).
ROWS = {
    "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "boolq": 3270, "openbookqa": 500,
    "winogrande": 1267, "lambada": 5153, "hellaswag": 10042,
}


@needs_data
@pytest.mark.parametrize("name", list(ROWS))
def test_reader_gives_the_standard_row_count(name):
    rows = T.TASKS[name].reader()
    assert len(rows) == ROWS[name]
    if "choices" in rows[0]:
        assert all(0 <= r["gold"] < len(r["choices"]) for r in rows)


@needs_data
def test_mmlu_has_57_subjects_and_the_standard_rows():
    test, dev = T.read_mmlu(split="test"), T.read_mmlu(split="dev")
    assert len(test) == 57 and sum(map(len, test.values())) == 14042
    assert set(dev) == set(test) and sum(map(len, dev.values())) == 285
    q = test["anatomy"][0]["query"]
    assert q.endswith("\nAnswer:") and "\nA. " in q and "\nD. " in q


@needs_data
def test_prompts_match_lm_eval_defaults():
    assert T.read_piqa()[0]["query"].startswith("Question: ") and T.read_piqa()[0]["query"].endswith("\nAnswer:")
    assert T.read_arc_easy()[0]["query"].endswith("?\nAnswer:")
    boolq = T.read_boolq()[0]["query"]
    assert not boolq.startswith("Passage:") and "\nQuestion: " in boolq and boolq.endswith("?\nAnswer:")
    lam = T.read_lambada()[0]
    assert not lam["context"].endswith(" ") and " " not in lam["continuation"]


def test_hellaswag_preprocess_is_lm_evals():
    from lm_eval.tasks.hellaswag.utils import preprocess

    for text in ["A man [title] Step one. [step] He walks.  ", "no brackets here", " [header] x  y"]:
        assert T.hellaswag_preprocess(text) == preprocess(text)


@needs_data
def test_rendered_tasks_load_in_lm_eval(tmp_path):
    from lm_eval.tasks import TaskManager

    specs = T.resolve_tasks("piqa,winogrande,lambada")
    folder = T.render_tasks(specs, data_dir(), folder=tmp_path)
    manager = TaskManager(include_path=str(folder), include_defaults=False, verbosity="ERROR")
    assert {"dpq_piqa", "dpq_winogrande", "dpq_lambada"} <= set(manager.all_tasks)
    loaded = manager.load_task_or_group(["dpq_winogrande"])
    task = next(iter(loaded.values()))
    doc = task.test_docs()[0]
    # partial scoring: one context per option, the continuation after the blank is the target
    assert task.multiple_input == 2 and task.doc_to_target(doc) == doc["continuation"]


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(T.TaskError, match="piqa, arc_easy"):
        T.resolve_tasks(["piqa", "squad"])


@pytest.mark.parametrize("make_dir", [False, True])
def test_missing_data_offline_names_dpq_data_dir(monkeypatch, tmp_path, make_dir):
    target = tmp_path / "data"
    if make_dir:
        target.mkdir()  # exists but holds no tasks/
    monkeypatch.setenv("DPQ_DATA_DIR", str(target))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="DPQ_DATA_DIR"):
        T.run_tasks(model=None, tokenizer=None, tasks=["piqa"])


def test_all_expands_to_every_task_and_duplicates_collapse():
    assert [s.name for s in T.resolve_tasks("all")] == list(T.TASKS)
    assert [s.name for s in T.resolve_tasks("piqa, PIQA,mmlu")] == ["piqa", "mmlu"]
