"""dpq's accuracy targets: the thresholds live in targets.toml beside this file; these functions
check results against them.

    check_paper(rows)            the paper's targets on merged `dpq compare` rows (one per model, F, method)
    recovery_targets()           the live floors of targets.toml, as RecoveryTarget
    measure_recovery(target)     quantize and measure one (minutes on a CPU; tests/eval/test_targets.py)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

FLOAT = "bf16"
W4A8 = ("rtn-w4a8", "naive-w4a8", "dpq", "dpq-gar", "dpq-gar-plus")
TARGETS_FILE = Path(__file__).with_name("targets.toml")


@cache
def load(path: Path = TARGETS_FILE) -> dict:
    """targets.toml as a dict ({"paper": {...}, "recovery": [...]})."""
    with open(path, "rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class RecoveryTarget:
    name: str
    model: str
    method: str
    calib_samples: int
    calib_seq_len: int
    windows: int
    window_len: int
    max_ppl_ratio: float
    measured: float


def recovery_targets(path: Path = TARGETS_FILE) -> list[RecoveryTarget]:
    return [RecoveryTarget(**t) for t in load(path).get("recovery", [])]


def _windows_used(label) -> int:
    """How many perplexity windows a label names ("16/142" -> 16)."""
    try:
        return int(str(label).split("/")[0])
    except ValueError:
        return 0


def _get(rows: list[dict], model: str, f, method: str) -> dict | None:
    for r in rows:
        if r["model"] == model and r["method"] == method and r["fp8_max"] == (f if method in W4A8 else None):
            return r
    return None


def _ppl(rows, model, f, methods):
    """The methods' perplexities on the most windows they all share, and that window label."""
    found = [_get(rows, model, f, m) for m in methods]
    if any(r is None for r in found):
        return [None] * len(methods), None
    shared = set.intersection(*(set(r["ppl_by_windows"]) for r in found))
    if not shared:
        return [None] * len(methods), None
    w = max(shared, key=_windows_used)
    return [r["ppl_by_windows"][w] for r in found], w


def check_paper(rows: list[dict], paper: dict | None = None) -> list[dict]:
    """The [paper] targets per (model, F) of rows with keys model, fp8_max, method, ppl_by_windows
    {window label: ppl}, average, avg_delta_paired, avg_delta_stderr, limit. A missing method or
    result gives holds None (not measured), never a pass."""
    paper = paper or load()["paper"]
    order_methods, method, baseline = paper["ordering"], paper["ratio_method"], paper["ratio_baseline"]
    max_ratio, max_acc = paper["max_ppl_increase_ratio"], paper["max_avg_acc_change_points"]
    out = []
    for model, f in sorted({(r["model"], r["fp8_max"]) for r in rows if r["fp8_max"] is not None}):
        order_ppl, order_windows = _ppl(rows, model, f, order_methods)
        (base, ref, q_ppl), ratio_windows = _ppl(rows, model, f, [FLOAT, baseline, method])
        order = None if None in order_ppl else all(a < b for a, b in zip(order_ppl, order_ppl[1:]))
        ratio = None if None in (base, ref, q_ppl) or ref == base else (q_ppl - base) / (ref - base)
        fl, q = _get(rows, model, f, FLOAT), _get(rows, model, f, method)
        acc = se = None
        if q and q["avg_delta_paired"] is not None:
            acc, se = 100 * q["avg_delta_paired"], 100 * q["avg_delta_stderr"]
        elif fl and q and fl["average"] is not None and q["average"] is not None:
            acc = 100 * (q["average"] - fl["average"])
        out.append({
            "model": model, "fp8_max": f,
            "ordering": {"holds": order, "windows": order_windows, "ppl": dict(zip(order_methods, order_ppl))},
            "ppl_ratio": {"value": ratio, "target": max_ratio, "holds": None if ratio is None else ratio <= max_ratio,
                          "windows": ratio_windows},
            "accuracy": {"delta_points": acc, "paired_stderr_points": se,
                         "holds": None if acc is None else abs(acc) <= max_acc,
                         "limit": None if q is None else q["limit"]},
        })
    return out


def measure_recovery(target: RecoveryTarget, model=None, tokenizer=None, float_ppl: float | None = None) -> dict:
    """Quantize target.model (or the given float model, left unchanged) with target.method on the
    stated calibration (WikiText-2 validation, seed 0) and measure float and quantized perplexity on
    the first windows of the test set, on one CPU thread (the same sums on any machine's thread
    count). Returns {"float", "quantized", "ratio", "holds", "linears" (how many were quantized),
    "mean_rel_error", "model" (the quantized model)}."""
    import torch  # noqa: PLC0415

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(target, model, tokenizer, float_ppl)
    finally:
        torch.set_num_threads(threads)


def _measure(target: RecoveryTarget, model, tokenizer, float_ppl) -> dict:
    import copy  # noqa: PLC0415

    import dpq  # noqa: PLC0415
    from dpq.eval.perplexity import wikitext2_perplexity  # noqa: PLC0415
    from dpq.models.loading import load_float_model  # noqa: PLC0415

    if model is None:
        model, tokenizer, _ = load_float_model(target.model)
    ppl = lambda m: wikitext2_perplexity(m, tokenizer, target.window_len, target.windows, progress=False).ppl  # noqa: E731
    base = float_ppl if float_ppl is not None else ppl(model)
    cfg = dpq.QuantConfig.for_method(target.method, calib=dpq.CalibSpec(samples=target.calib_samples,
                                                                         seq_len=target.calib_seq_len))
    result = dpq.quantize(copy.deepcopy(model), tokenizer, cfg, progress=False)
    q = ppl(result.model)
    return {"float": base, "quantized": q, "ratio": q / base, "holds": q / base <= target.max_ppl_ratio,
            "linears": len(result.summary.linears), "mean_rel_error": result.summary.mean_rel_error,
            "model": result.model}
