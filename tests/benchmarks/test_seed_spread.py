"""benchmarks/seed_spread.py: the seed summary of separate `dpq compare --seed N` files."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seed_spread.py"
spec = importlib.util.spec_from_file_location("seed_spread", SCRIPT)
SS = importlib.util.module_from_spec(spec)
spec.loader.exec_module(SS)


def _file(path: Path, seed: int, ppl: float, group_size: int = 128) -> str:
    calib = {"source": "wikitext2", "samples": 32, "seq_len": 2048, "seed": seed, "skip_first": 0}
    path.write_text(json.dumps({
        "model": "tiny", "calibration": calib, "quant_kwargs": {"group_size": group_size, "calib": calib},
        "results": {"dpq-gar": {"method": "dpq-gar", "wikitext2_ppl": ppl, "windows": "4/10", "tasks": {},
                                "average": None, "settings": {"ppl": "wikitext2", "seq_len": 2048}}},
    }))
    return str(path)


def test_writes_json_markdown_and_plot(tmp_path, capsys):
    files = [_file(tmp_path / f"s{k}.json", k, p) for k, p in ((0, 28.0), (1, 28.6))]
    out = tmp_path / "out"
    assert SS.main(files + ["--json", str(out / "s.json"), "--markdown", str(out / "s.md"),
                            "--plot", str(out / "s.png")]) == 0
    s = json.loads((out / "s.json").read_text())
    assert s["files"] == files and abs(s["metrics"]["dpq-gar"]["wikitext2_ppl"]["spread"] - 0.6) < 1e-12
    assert "| dpq-gar | 28.000 | 28.600 | 28.300 | 0.600 |" in (out / "s.md").read_text()
    assert (out / "s.png").stat().st_size > 0


def test_refuses_files_that_differ_in_more_than_the_seed(tmp_path, capsys):
    files = [_file(tmp_path / "a.json", 0, 28.0), _file(tmp_path / "b.json", 1, 28.0, group_size=64)]
    assert SS.main(files) == 2
    assert "only the calibration seed may differ" in capsys.readouterr().err
    assert SS.main([str(tmp_path / "missing.json")]) == 2
