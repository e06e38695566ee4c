"""Human-readable tables for a quantization run and a checkpoint (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from dpq.config import METHOD_OPTIONS


def print_summary(summary, model_name: str = "", console: Console | None = None) -> None:
    """Per-Linear relative output error and solve time, then totals and peak memory."""
    console = console or Console(width=max(Console().width, 100))
    t = Table(title=f"{model_name} {summary.method}: per-layer results")
    err_col = "rel. weight err" if summary.data_free else "rel. output err"
    for col in ("Linear", "N x K", err_col, "solve s", "s_x"):
        t.add_column(col, justify="right" if col != "Linear" else "left")
    for r in summary.linears:
        sx = "-" if r.input_scale is None else f"{r.input_scale:.3g}"
        t.add_row(r.name.removeprefix("model."), f"{r.shape[0]}x{r.shape[1]}", f"{r.rel_error:.4f}", f"{r.solve_seconds:.2f}", sx)
    console.print(t)
    if summary.resumed_at:
        console.print(f"resumed at layer {summary.resumed_at}/{summary.layers}: the rows above include the "
                      "layers an earlier run finished; times and memory are this run's")
    if summary.phases:
        total = sum(summary.phases.values()) or 1.0
        console.print("time by phase: " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)"
                                                    for k, v in summary.phases.items()))
    solve = sum(r.solve_seconds for r in summary.linears)
    worst = max(summary.linears, key=lambda r: r.rel_error) if summary.linears else None
    console.print(
        f"{len(summary.linears)} Linears quantized ({len(summary.skipped)} ignored), "
        f"mean {err_col} {summary.mean_rel_error:.4f}"
        + (f", worst {worst.rel_error:.4f} ({worst.name})" if worst else "")
        + ("; no calibration needed" if summary.data_free else f"; calibration {summary.calib_tokens} tokens")
        + f"; solve {solve:.1f} s, total {summary.seconds:.1f} s; "
        f"peak RSS {summary.peak_rss_mb:.0f} MiB"
        + (f", peak GPU {summary.peak_device_mb:.0f} MiB" if summary.peak_device_mb is not None else "")
    )
    flagged = summary.concentrated()
    if flagged:
        shares = {r.name: r.top_token_share for r in flagged}
        fp8 = any(r.input_scale is not None for r in flagged)
        console.print("[yellow]note:[/] " + concentration_note(summary.method, shares, fp8), soft_wrap=True)


def concentration_note(method: str, shares: dict[str, float], fp8: bool) -> str:
    """Advice for Linears whose calibration inputs a few tokens dominate (`dpq.models.driver.concentrated`).

    shares: {Linear name: share of its tr(H) carried by the top 0.1% of tokens}; fp8: the method
    quantizes those Linears' inputs to FP8 (a W4A8 method).
    """
    names = ", ".join(f"{name} ({100 * share:.0f}%)" for name, share in shares.items())
    text = f"0.1% of the calibration tokens carry most of the input energy of {names}: massive activations"
    if method.startswith("rtn"):
        text += ", which set the FP8 input scale" if fp8 else ""
    elif METHOD_OPTIONS.get(method, {}).get("asym_alpha"):
        text += (
            (", which set the FP8 input scale" if fp8 else "")
            + f". {method} fits the float model's outputs through the deployed inputs, which measured well on "
            "such a model (SmolLM2-135M, docs/results/beyond-the-paper.md); if quality still falls short"
        )
    else:
        rtn = "rtn-w4a16" if method.endswith("w4a16") else "rtn-w4a8"
        text += (
            ", which the solver fits instead of the typical tokens"
            + (" and which set the FP8 input scale" if fp8 else "")
            + f". Compare this model with --method {rtn}; if calibration loses"
        )
    return text + ", keep these Linears in float with --ignore " + " ".join(shares)


def activation_text(settings: dict) -> str:
    """How a checkpoint's Linears quantize their inputs, from its settings (`QuantConfig.to_dict()`)."""
    fp8 = settings["fp8"]["fp8_max"]
    if not fp8:
        return "BF16 (W4A16)"
    if settings.get("target") == "vllm-w4afp8":
        return f"FP8 E4M3 dynamic per-token (vLLM W4AFP8: scale from each token's max|x| at run time), F = {fp8:g}"
    return f"FP8 E4M3 static per-tensor ({settings['act']['method']} scale from calibration), F = {fp8:g}"


def print_info(info: dict, console: Console | None = None) -> None:
    console = console or Console()
    s = info["settings"]
    t = Table(title=f"dpq checkpoint {info['path']}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    fp8 = s["fp8"]["fp8_max"]
    rows = [
        ("method", info["method"]),
        ("model type", str(info["model_type"])),
        ("format version", str(info["format_version"])),
        ("weights", f"INT4 {'symmetric' if s['weight']['symmetric'] else 'asymmetric'}, group size {s['weight']['group_size']}, scales {s['weight']['scale_dtype']}"),
        ("activations", activation_text(s)),
        ("solver", f"{s['solver']['algorithm']}, fp8_aware={s['solver']['fp8_aware']}, gar={s['solver']['gar']}, group params {s['solver']['group_params']}"
         + (f", Hessians skip the first {skip} tokens" if (skip := s["calib"].get("skip_first", 0)) else "")),
        ("calibration", ", ".join(f"{k}={v}" for k, v in info["calibration"].items())),
        ("quantized Linears", str(info["quantized_linears"])),
        ("their weight bytes", f"{info['quantized_weight_bytes'] / 2**20:.2f} MiB (BF16: {info['bf16_weight_bytes'] / 2**20:.2f} MiB)"),
        ("ratio to BF16", f"{info['ratio_to_bf16']:.3f}"),
        ("other tensors", f"{info['other_tensor_bytes'] / 2**20:.2f} MiB (embeddings, norms, lm_head: kept in high precision)"),
    ]
    for r in rows:
        t.add_row(*r)
    console.print(t)
    if info.get("concentrated"):
        note = concentration_note(info["method"], info["concentrated"], fp8=bool(fp8))
        console.print("[yellow]note:[/] " + note, soft_wrap=True)
