"""benchmarks/accuracy_targets.py: merging compare runs and checking the targets."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy_targets.py"
spec = importlib.util.spec_from_file_location("accuracy_targets", SCRIPT)
AT = importlib.util.module_from_spec(spec)
spec.loader.exec_module(AT)


def compare(results: dict, fp8_max=448.0):
    return {"model": "tiny", "quant_kwargs": {"fp8_max": fp8_max, "group_size": 128}, "results": results}


def ppl_row(method, ppl):
    return {"method": method, "wikitext2_ppl": ppl, "windows": "4/10", "tasks": {}, "average": None, "settings": {}}


def task_row(method, correct):
    acc = sum(correct) / len(correct)
    return {"method": method, "wikitext2_ppl": None, "tasks": {"piqa": {"acc": acc, "n": len(correct), "correct": correct}},
            "average": acc, "settings": {"limit": len(correct)}}


PPL = compare({m: ppl_row(m, p) for m, p in
               [("bf16", 20.0), ("gptq-w4a16", 24.0), ("rtn-w4a8", 30.0), ("naive-w4a8", 25.0), ("dpq-gar", 24.2)]})
TASKS = compare({"bf16": task_row("bf16", [1] * 60 + [0] * 40), "dpq-gar": task_row("dpq-gar", [1] * 59 + [0] * 41)})


def test_rows_from_a_perplexity_run_and_a_task_run_are_merged():
    table = AT.rows([PPL, TASKS])
    dg = next(r for r in table if r["method"] == "dpq-gar")
    assert dg["wikitext2_ppl"] == 24.2 and dg["average"] == pytest.approx(0.59)
    assert dg["avg_delta_paired"] == pytest.approx(-0.01) and dg["limit"] == 100
    assert len(table) == 5


def test_targets_are_checked_with_the_paired_change():
    (t,) = AT.check(AT.rows([PPL, TASKS]))
    assert t["ordering"]["holds"] is True
    assert t["ppl_ratio"]["value"] == pytest.approx(4.2 / 4.0) and t["ppl_ratio"]["holds"] is True
    assert t["accuracy"]["delta_points"] == pytest.approx(-1.0) and t["accuracy"]["holds"] is True
    assert t["accuracy"]["paired_stderr_points"] == pytest.approx(1.0)  # one changed answer in 100: sd 0.1, se 0.01


def test_a_missing_result_is_not_measured_never_a_pass():
    (t,) = AT.check(AT.rows([PPL]))
    assert t["accuracy"]["holds"] is None
    worse = compare({**PPL["results"], "dpq-gar": ppl_row("dpq-gar", 26.0)})
    (t,) = AT.check(AT.rows([worse]))
    assert t["ordering"]["holds"] is False and t["ppl_ratio"]["holds"] is False


def test_cli_writes_json_and_markdown_and_refuses_other_files(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(PPL))
    b.write_text(json.dumps(TASKS))
    assert AT.main([str(a), str(b), "--json", str(tmp_path / "t.json"), "--markdown", str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "| tiny | 448 | yes (4/10 windows) | 1.05: yes (4/10 windows) | -1.00 +/- 1.00: yes |" in md
    assert json.loads((tmp_path / "t.json").read_text())["targets"][0]["accuracy"]["holds"] is True
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(SystemExit):
        AT.main([str(bad)])
    assert "not a `dpq compare --json` output" in capsys.readouterr().err


def test_the_float_tasks_of_another_run_are_the_baseline_and_a_task_table_is_written():
    quant_only = compare({"dpq-gar": task_row("dpq-gar", [1] * 58 + [0] * 42)})
    float_only = compare({"bf16": task_row("bf16", [1] * 60 + [0] * 40)})
    table = AT.rows([PPL, float_only, quant_only])
    dg = next(r for r in table if r["method"] == "dpq-gar")
    assert dg["avg_delta_paired"] == pytest.approx(-0.02)
    md = AT.task_tables([PPL, float_only, quant_only])
    assert "### tiny" in md and "| bf16 | 60.0 | 60.0 |" in md and "| dpq-gar | 58.0 (-2.0) | 58.0 (-2.0) |" in md
    assert "- dpq-gar: average -2.00 +/- 1.41 points" in md


def mmlu_row(method, acc):
    return {"method": method, "wikitext2_ppl": None, "average": None, "settings": {"limit": 5},
            "tasks": {"mmlu": {"acc": acc, "n": 285, "correct": [1] * 10 + [0] * 275}}}


def test_an_mmlu_only_run_adds_a_column_and_keeps_the_pairing_of_the_other_tasks():
    mmlu = compare({"bf16": mmlu_row("bf16", 0.225), "dpq-gar": mmlu_row("dpq-gar", 0.249)})
    for order in ([PPL, mmlu, TASKS], [PPL, TASKS, mmlu]):
        table = AT.rows(order)
        fl = next(r for r in table if r["method"] == "bf16")
        dg = next(r for r in table if r["method"] == "dpq-gar")
        assert fl["mmlu"] == 0.225 and dg["mmlu"] == 0.249 and dg["mmlu_limit"] == 5
        assert dg["average"] == pytest.approx(0.59) and dg["limit"] == 100  # MMLU stays out of the average
        assert dg["avg_delta_paired"] == pytest.approx(-0.01)
        md = AT.task_tables(order)
        assert "| method | piqa | mmlu | average |" in md  # the tasks in their usual order
        assert "| bf16 | 60.0 | 22.5 | 60.0 |" in md
        assert "- dpq-gar: average -1.00 +/- 1.00 points" in md


def test_the_perplexity_with_the_most_windows_wins():
    full = compare({"dpq-gar": {**ppl_row("dpq-gar", 23.0), "windows": "10/10"}})
    for order in ([PPL, full], [full, PPL]):
        dg = next(r for r in AT.rows(order) if r["method"] == "dpq-gar")
        assert dg["wikitext2_ppl"] == 23.0 and dg["windows"] == "10/10"


def test_targets_compare_perplexities_on_the_same_windows_only():
    full = compare({m: {**ppl_row(m, p), "windows": "10/10"} for m, p in [("bf16", 21.0), ("dpq-gar", 26.0)]})
    (t,) = AT.check(AT.rows([PPL, full]))
    # dpq-gar's full-test 26.0 must not be set against naive's 4-window 25.0: the ordering stays on 4/10
    assert t["ordering"]["holds"] is True and t["ordering"]["windows"] == "4/10"
    assert t["ppl_ratio"]["value"] == pytest.approx(4.2 / 4.0) and t["ppl_ratio"]["windows"] == "4/10"
    gptq_full = compare({"gptq-w4a16": {**ppl_row("gptq-w4a16", 25.0), "windows": "10/10"}})
    (t,) = AT.check(AT.rows([PPL, full, gptq_full]))
    assert t["ppl_ratio"]["windows"] == "10/10" and t["ppl_ratio"]["value"] == pytest.approx(5.0 / 4.0)
    assert t["ppl_ratio"]["holds"] is False
    (t,) = AT.check(AT.rows([full]))
    assert t["ordering"]["holds"] is None and t["ppl_ratio"]["holds"] is None
