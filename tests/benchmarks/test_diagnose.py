"""benchmarks/diagnose.py: the variant table and its argument checks (the model runs are benchmarks)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnose.py"
spec = importlib.util.spec_from_file_location("diagnose", SCRIPT)
D = importlib.util.module_from_spec(spec)
spec.loader.exec_module(D)


def test_task_only_table_shows_the_change_against_float():
    rows = [
        {"variant": "float", "wikitext2_ppl": None, "windows": None, "tasks": {"lambada": {"acc": 0.44, "n": 200}}},
        {"variant": "w4a8", "wikitext2_ppl": None, "windows": None, "tasks": {"lambada": {"acc": 0.26, "n": 200}}},
    ]
    lines = D._table(rows, ["lambada"])
    assert lines[0] == "| variant | lambada acc % |"
    assert lines[2:] == ["| float | 44.0 |", "| w4a8 | 26.0 (-18.0) |"]


def test_perplexity_table_has_the_change_column():
    rows = [{"variant": "float", "wikitext2_ppl": 20.0, "windows": "4/10"},
            {"variant": "acts-only", "wikitext2_ppl": 20.5, "windows": "4/10"}]
    assert D._table(rows, [])[3] == "| acts-only | 20.500 (4/10) | +0.500 |"


def test_nothing_to_evaluate_and_unknown_variants_are_refused(capsys):
    with pytest.raises(SystemExit):
        D.main(["ckpt", "--ppl", "none"])
    assert "--ppl none needs --tasks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        D.main(["ckpt", "--variants", "nope"])
    assert "unknown variant(s) nope" in capsys.readouterr().err
