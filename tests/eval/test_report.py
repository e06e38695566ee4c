from dpq.eval.report import plot, to_markdown


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
