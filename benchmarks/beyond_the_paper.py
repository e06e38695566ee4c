"""Tables of the issue-26 study (solver options beyond the paper) from the JSON files of its runs.

    python benchmarks/beyond_the_paper.py --dir benchmarks/results/beyond-the-paper

reads, in that folder,
  sel_<model>_<tag>.json        setting selection: `benchmarks/beyond_sel.sh` runs (calibration on the first
                                80% of the WikiText-2 validation tokens, perplexity on 4 windows of the rest)
  compare_<model>_*.json        the protocol of the README (`dpq compare`, WikiText-2 test windows / tasks)
  solver_quality.json           `benchmarks/solver_quality.py --options` (layer level)
and writes summary.json (with "meta") and summary.md. Today's DPQ-GAR and the other baselines of the
protocol tables come from benchmarks/results/*.json (measured before this study, same protocol).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

BASELINES = {  # (model, F) -> README's comparison files holding today's methods on 16 test windows
    ("gemma3-270m", 448.0): "benchmarks/results/compare_gemma_g128_f448.json",
    ("gemma3-270m", 240.0): "benchmarks/results/compare_gemma_g128_f240.json",
    ("smollm2-135m", 448.0): "benchmarks/results/compare_smollm2_g128_f448.json",
}
FLOAT_16 = {"gemma3-270m": 25.283, "smollm2-135m": 20.714}
"""Float perplexity on the first 16 test windows of 2048 (README, measured)."""


def _load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _options(q: dict) -> str:
    keys = ("group_search", "deployed_hessian", "asym_alpha", "smooth", "token_clip", "refine_steps")
    shown = [f"{k}={q[k]}" for k in keys if q.get(k) not in (None, False, 0, 0.0)]
    return ", ".join(shown) or "-"


def _checkpoint_settings(path: str) -> dict:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return {}
    q = json.loads(cfg.read_text()).get("quantization_config", {})
    return {**q.get("settings", {}).get("solver", {}), "calib": q.get("settings", {}).get("calib", {}),
            "method": q.get("method")}


def selection_rows(folder: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(f"{folder}/sel_*.json")):
        d = _load(path)
        if "results" not in d:  # a `dpq eval CHECKPOINT --json` file (checkpoint saved by an interrupted compare)
            q = _checkpoint_settings(d["model"])
            rows.append({
                "file": Path(path).name, "model": Path(d["model"]).parts[-3] if len(Path(d["model"]).parts) > 2
                else d["model"], "method": d["method"], "options": _options(q),
                "calib": q.get("calib", {}).get("source", "wikitext2"), "heldout_ppl": d["wikitext2_ppl"],
                "windows": d["windows"], "quantize_s": None, "complete": True,
            })
            continue
        for method, r in d["results"].items():
            if r.get("wikitext2_ppl") is None:
                continue
            t = r["settings"]["timings"]
            rows.append({
                "file": Path(path).name, "model": d["model"], "method": method,
                "options": _options({**d["quant_kwargs"], **_checkpoint_settings(r.get("checkpoint", ""))}),
                "calib": d["quant_kwargs"].get("calib", {}).get("source", "wikitext2"),
                "heldout_ppl": r["wikitext2_ppl"], "windows": r["windows"],
                "quantize_s": t.get("quantize_s"), "complete": d.get("complete", False),
            })
    return rows


def protocol_rows(folder: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(f"{folder}/compare_*.json")):
        d = _load(path)
        q = d["quant_kwargs"]
        for method, r in d["results"].items():
            rows.append({
                "file": Path(path).name, "model": d["model"], "method": method, "options": _options(q),
                "fp8_max": q.get("fp8_max", 448.0), "seed": q.get("calib", {}).get("seed", 0),
                "ppl": r.get("wikitext2_ppl"), "windows": r.get("windows"), "average": r.get("average"),
                "quantize_s": r["settings"]["timings"].get("quantize_s"),
            })
    return rows


def baseline(model: str, f: float, method: str) -> float | None:
    path = BASELINES.get((model, f))
    if not path or not Path(path).exists():
        return None
    r = _load(path)["results"].get(method)
    return None if r is None else r.get("wikitext2_ppl")


def markdown(sel: list[dict], proto: list[dict]) -> str:
    out = ["## Setting selection (held-out WikiText-2 validation, 4 windows of 2048)", "",
           "| file | model | method | options | calibration | held-out ppl | quantize s |", "|---|---|---|---|---|---|---|"]
    for r in sel:
        out.append(f"| {r['file']} | {r['model']} | {r['method']} | {r['options']} | {r['calib']} | "
                   f"{r['heldout_ppl']:.3f} | {r['quantize_s']} |")
    out += ["", "## Protocol (WikiText-2 test)", "",
            "| file | model | method | options | F | seed | ppl (windows) | increase over float | vs today's dpq-gar | quantize s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in proto:
        if r["ppl"] is None:
            continue
        base = baseline(r["model"], float(r["fp8_max"]), "dpq-gar")
        fl = FLOAT_16.get(r["model"]) if (r["windows"] or "").startswith("16/") else None
        inc = f"{r['ppl'] - fl:+.3f}" if fl else "-"
        ratio = f"{(r['ppl'] - fl) / (base - fl):.2f}x" if fl and base else "-"
        out.append(f"| {r['file']} | {r['model']} | {r['method']} | {r['options']} | {r['fp8_max']:g} | {r['seed']} | "
                   f"{r['ppl']:.3f} ({r['windows']}) | {inc} | {ratio} | {r['quantize_s']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="benchmarks/results/beyond-the-paper")
    a = ap.parse_args()
    sel, proto = selection_rows(a.dir), protocol_rows(a.dir)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    summary = {"meta": {"command": "python " + " ".join(sys.argv), "git_commit": commit,
                        "platform": platform.platform(), "cpu_count": os.cpu_count(), "device": "cpu"},
               "selection": sel, "protocol": proto}
    Path(a.dir, "summary.json").write_text(json.dumps(summary, indent=1))
    Path(a.dir, "summary.md").write_text(markdown(sel, proto))
    print(markdown(sel, proto))


if __name__ == "__main__":
    main()
