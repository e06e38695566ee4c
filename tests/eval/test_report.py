import math

import pytest

from dpq.eval.report import paired_average_difference, plot, to_markdown


def result(method, ppl, accs, average):
    return {
        "model": "tiny", "method": method, "wikitext2_ppl": ppl, "windows": "8/140",
        "tasks": {t: {"acc": a, "n": 100, "note": "limit 100" if t == "piqa" else None} for t, a in accs.items()},
        "average": average,
        "settings": {"seq_len": 2048, "limit": 100, "num_fewshot": 0, "average": "mean of acc"},
    }


RESULTS = {
    "model": "tiny",
    "results": {
        "bf16": result("bf16", 20.0, {"piqa": 0.70, "arc_easy": 0.50}, 0.60),
        "rtn-w4a8": result("rtn-w4a8", 22.5, {"piqa": 0.65, "arc_easy": 0.47}, 0.56),
    },
}


def test_markdown_table_has_every_method_and_the_change_against_float():
    md = to_markdown(RESULTS)
    lines = md.splitlines()
    assert lines[0] == "| method | wikitext2 ppl | piqa | arc_easy | average |"
    assert lines[2].startswith("| bf16 | 20.000 | 70.0 | 50.0 | 60.0 |")
    assert lines[3] == "| rtn-w4a8 | 22.500 (+2.500) | 65.0 (-5.0) | 47.0 (-3.0) | 56.0 (-4.0) |"
    assert "piqa: limit 100" in md


def test_markdown_accepts_a_list_without_tasks():
    md = to_markdown([{"method": "dpq", "wikitext2_ppl": 21.0, "tasks": {}, "average": None}])
    assert "| dpq | 21.000 |" in md and "average" not in md.splitlines()[0]


def test_plot_writes_a_png(tmp_path):
    path = plot(RESULTS, tmp_path / "sub" / "compare.png")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def with_correct(method, correct: dict):
    """An evaluate dict whose tasks carry per-example correctness; acc and average follow from it."""
    tasks = {t: {"acc": sum(c) / len(c), "n": len(c), "correct": c} for t, c in correct.items()}
    accs = [v["acc"] for v in tasks.values()]
    return {"method": method, "tasks": tasks, "average": sum(accs) / len(accs), "settings": {}}


def test_paired_difference_matches_the_change_of_the_average_and_a_hand_computed_stderr():
    base = with_correct("bf16", {"piqa": [1, 1, 0, 0], "boolq": [1, 0, 1, 0, 1]})
    other = with_correct("dpq-gar", {"piqa": [1, 0, 0, 1], "boolq": [1, 0, 0, 0, 1]})
    p = paired_average_difference(base, other)
    assert p["delta"] == pytest.approx(other["average"] - base["average"])
    # piqa: d = [0,-1,0,1], mean 0, var 2/3 -> se sqrt(2/3/4); boolq: d = [0,0,-1,0,0], mean -0.2, var 0.2 -> se 0.2
    se_piqa, se_boolq = math.sqrt(2 / 3 / 4), math.sqrt(0.2 / 5)
    assert p["tasks"]["piqa"]["stderr"] == pytest.approx(se_piqa)
    assert p["stderr"] == pytest.approx(math.sqrt(se_piqa**2 + se_boolq**2) / 2)
    assert p["changed"] == 3 and p["n"] == 9


def test_paired_difference_of_identical_answers_is_exactly_zero_and_mmlu_is_left_out():
    base = with_correct("bf16", {"piqa": [1, 0, 1], "mmlu": [0, 0, 0]})
    other = with_correct("x", {"piqa": [1, 0, 1], "mmlu": [1, 1, 1]})
    p = paired_average_difference(base, other)
    assert p["delta"] == 0 and p["stderr"] == 0 and list(p["tasks"]) == ["piqa"]


def test_paired_difference_needs_per_example_results_of_the_same_length():
    base = with_correct("bf16", {"piqa": [1, 0, 1]})
    assert paired_average_difference(base, with_correct("x", {"piqa": [1, 0]})) is None
    assert paired_average_difference(RESULTS["results"]["bf16"], RESULTS["results"]["rtn-w4a8"]) is None


def test_markdown_reports_the_paired_change_of_the_average():
    md = to_markdown([with_correct("bf16", {"piqa": [1, 1, 0, 0]}), with_correct("dpq", {"piqa": [1, 0, 0, 0]})])
    assert "- dpq: average -25.00 +/- 25.00 points against the float model" in md
    assert "1 answers differ" in md


def test_footer_names_only_what_was_measured():
    md = to_markdown(RESULTS)
    assert "perplexity windows 8/140 of 2048 tokens; tasks: acc in %, 0-shot, limit 100" in md
    tasks_only = {"results": {m: {**r, "wikitext2_ppl": None, "windows": None} for m, r in RESULTS["results"].items()}}
    assert "no perplexity; tasks: acc in %" in to_markdown(tasks_only)
    ppl_only = to_markdown([{"method": "dpq", "wikitext2_ppl": 21.0, "windows": "4/9", "tasks": {},
                             "settings": {"seq_len": 512}}])
    assert "perplexity windows 4/9 of 512 tokens; no tasks." in ppl_only
