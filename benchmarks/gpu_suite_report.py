"""gpu_suite.py's reading of its numbers: the large-M threshold, the issue's targets, the markdown."""

from __future__ import annotations

import math


def _rule_rows(rows):
    return [r for r in rows if r.get("rule_path")]


def suggest_threshold(rows: list[dict], sweep_ms: list[int]) -> dict:
    """Where the dequantize + _scaled_mm path starts to beat the fused kernel.

    Per M of the sweep: the fused/dequant time ratio of every shape (>1: dequant faster). The
    suggestion is the smallest swept M from which dequant is faster for every shape at every larger
    swept M; None when no such M (keep or raise the threshold).
    """
    times = {}
    for r in rows:
        if r["variant"] in ("w4a8_fused", "w4a8_dequant") and r["M"] in sweep_ms:
            times.setdefault((r["M"], r["layer"]), {})[r["variant"]] = r["ms"]
    per_m = {}
    for (m, layer), t in sorted(times.items()):
        if len(t) == 2:
            per_m.setdefault(m, {})[layer] = t["w4a8_fused"] / t["w4a8_dequant"]
    suggestion = None
    for m in sorted(per_m, reverse=True):
        if all(v > 1 for v in per_m[m].values()):
            suggestion = m
        else:
            break
    return {"fused_over_dequant": per_m, "suggested_LARGE_M_THRESHOLD": suggestion,
            "rule": "smallest swept M from which the dequantize path wins on every shape at every larger M"}


def _check(values: list[float], target: float, dry: bool) -> dict:
    if dry:
        return {"target": target, "holds": None, "note": "dry run: not a measurement"}
    if not values or any(math.isnan(v) for v in values):
        return {"target": target, "holds": None, "note": "not measured"}
    return {"target": target, "worst": min(values), "values": values, "holds": min(values) >= target}


def targets(result: dict, goals: dict) -> dict:
    """The issue's speed targets against the measured numbers (holds None: not measured)."""
    dry = result["meta"].get("dry_run", False)
    rows = _rule_rows(result["sections"].get("gemm", {}).get("rows", []))
    small = [r for r in rows if r["M"] <= 16]
    large = [r for r in rows if r["M"] >= 1024]
    ratios = result["sections"].get("e2e", {}).get("ratios", {})
    return {
        "small_m_vs_bf16": _check([r["vs_bf16"] for r in small], goals["small_m_vs_bf16"], dry),
        "small_m_vs_fp8": _check([r["vs_fp8"] for r in small], goals["small_m_vs_fp8"], dry),
        "large_m_vs_fp8": _check([r["vs_fp8"] for r in large], goals["large_m_vs_fp8"], dry),
        "large_m_vs_bf16": _check([r["vs_bf16"] for r in large], goals["large_m_vs_bf16"], dry),
        "decode_b1_vs_bf16": _check([ratios[k] for k in ("decode_b1",) if k in ratios],
                                    goals["decode_b1_vs_bf16"], dry),
        "decode_b1_decoder_only_vs_bf16": _check([ratios[k] for k in ("decode_decoder_only_b1",) if k in ratios],
                                                 goals["decode_b1_vs_bf16"], dry),
        "prefill_vs_bf16": _check([ratios[k] for k in ("prefill",) if k in ratios], goals["prefill_vs_bf16"], dry),
    }


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def markdown(result: dict) -> str:
    meta, sec = result["meta"], result["sections"]
    lines = [f"# dpq GPU suite: {meta.get('device')}", "",
             f"`{meta.get('command')}` at {str(meta.get('commit'))[:12]}; total {meta.get('total_seconds', '?')} s", ""]
    lines += ["| section | seconds | result |", "|---|---|---|"]
    for name, r in sec.items():
        what = r.get("error") or r.get("skipped") or r.get("summary") or "ok"
        lines.append(f"| {name} | {r.get('seconds', '')} | {str(what).splitlines()[0][:160]} |")
    if "ceilings" in sec.get("env", {}):
        c = sec["env"]["ceilings"]
        lines += ["", "Ceilings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in c.items())]
    if sec.get("gemm", {}).get("table"):
        th = sec["gemm"]["threshold"]
        lines += ["", "## GEMM", "", "```", sec["gemm"]["table"], "```", "",
                  f"Large-M threshold: fused/dequant time per M {th['fused_over_dequant']}; suggested "
                  f"LARGE_M_THRESHOLD = {th['suggested_LARGE_M_THRESHOLD']} ({th['rule']})."]
    e = sec.get("e2e", {})
    if "bf16" in e:
        lines += ["", "## End to end (tokens/s)", "", "| model | " + " | ".join(
            f"{k} b{b}" for k in ("decode", "decode_decoder_only") for b in e["bf16"].get(k, {})) + " | prefill |",
            "|---|" + "---|" * (1 + sum(len(e["bf16"].get(k, {})) for k in ("decode", "decode_decoder_only")))]
        for label in ("bf16", "w4a8"):
            r = e.get(label, {})
            cells = [_fmt(r.get(k, {}).get(b, {}).get("tokens_per_s", "-")) for k in ("decode", "decode_decoder_only")
                     for b in e["bf16"].get(k, {})]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(r.get('prefill_tps', '-'))} |")
        lines += ["", "W4A8 / BF16: " + ", ".join(f"{k} {_fmt(v)}" for k, v in e.get("ratios", {}).items())]
    q = sec.get("quantize", {})
    if "quantize_seconds" in q:
        lines += ["", f"## Quantize: {q['model']}, {q['method']}, calibration ids {q['calib_ids']}: "
                  f"{q['quantize_seconds']:.1f} s, {q['linears']} Linears, mean relative output error "
                  f"{_fmt(q['mean_rel_error'])}, peak device memory {_fmt(q['peak_device_mb'])} MB; logits "
                  f"triton vs reference relative difference {_fmt(q['logits_rel_diff_triton_vs_reference'])}"]
    lines += ["", "## Targets", "", "| target | needed | worst measured | holds |", "|---|---|---|---|"]
    for name, t in result.get("targets", {}).items():
        lines.append(f"| {name} | {t['target']} | {_fmt(t.get('worst', t.get('note', '-')))} | {t['holds']} |")
    return "\n".join(lines) + "\n"
