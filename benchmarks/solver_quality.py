"""Layer-level quality of every solver on real decoder layers.

For each model, the first, middle and last decoder layers: every Linear's real
inputs are captured (`dpq.models.linear_inputs`) while the float model runs over
calibration windows of WikiText-2 *validation* text. The calibration windows
build the Hessians (and the static max-abs FP8 activation scale of each Linear);
a second, disjoint-seed set of windows is kept as held-out inputs X.

Reported per method, over all Linears of those layers:
  err     relative output error on the held-out X under the numerics the
          method is deployed with: ||W X - Y_q|| / ||W X|| where
          W4A16: Y_q = X @ W_q^T;  W4A8: Y_q = s_x * fp8(X / s_x) @ W_q^T,
          W_q = s_w * fp8((q - z) * s_g) the inference weight, s_x = max|x| / F
          over the calibration inputs (static, per tensor).
  err_h   the same without activation quantization, on the calibration
          Hessian: sqrt(tr(D H D^T) / tr(W H W^T)) (the solvers' own objective).
  worst   the Linear with the largest err; time: mean solve seconds.

    python benchmarks/solver_quality.py --json benchmarks/results/solver_quality.json

`--options` adds DPQ-GAR rows with the solver options beyond the paper (issue 26), each alone and
in combination (labels `dpq-gar+gs`, `+dh`, `+aq0.5`, `+sm`, ...):
  gs     group-parameter search on the FP8 inference weight;
  dh     Hessian of the deployed inputs s_x * fp8(X / s_x);
  aqA    asymmetric correction with weight A (at the layer level the float model feeds every
         Linear, so the only gap between float and deployed inputs is the FP8 cast of X: the
         rows pair it with dh);
  sm     per-channel input scales of each set of Linears (shared by q/k/v, by gate/up; one per
         value channel for o_proj), searched as the driver does and applied to W and X.

    python benchmarks/solver_quality.py --options --json benchmarks/results/beyond-the-paper/solver_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import statistics
import time
from pathlib import Path

import torch

from dpq.algorithms import HessianAccumulator, relative_output_error, solve
from dpq.algorithms.gptaq import CrossAccumulator, asymmetric_target
from dpq.config import QuantConfig
from dpq.io.data import calibration_batches
from dpq.models.loading import load_float_model
from dpq.models.smoothing import SAMPLE_TOKENS, kv_tie, sample_tokens, search_scales
from dpq.models.linear_inputs import decoder, flat_float, watch_model_linears
from dpq.models.specs import get_submodule, spec_for
from dpq.numerics.fp8 import quantize_activation

METHODS = {
    "rtn-w4a16": dict(method="rtn-w4a16"),
    "gptq-w4a16": dict(method="gptq-w4a16"),
    "rtn-w4a8": dict(method="rtn-w4a8"),
    "naive-w4a8": dict(method="naive-w4a8"),
    "dpq": dict(method="dpq"),
    "dpq-frozen": dict(method="dpq", group_params="frozen"),
    "dpq-gar": dict(method="dpq-gar"),
    "dpq-gar-frozen": dict(method="dpq-gar", group_params="frozen"),
}


OPTION_ROWS = {  # label: (for_method options, deployed H, asym alpha, smoothing)
    "dpq-gar+gs": ({"group_search": True}, False, 0.0, False),
    "dpq-gar+dh": ({}, True, 0.0, False),
    "dpq-gar+dh+aq0.25": ({}, True, 0.25, False),
    "dpq-gar+dh+aq0.5": ({}, True, 0.5, False),
    "dpq-gar+dh+aq1": ({}, True, 1.0, False),
    "dpq-gar+sm": ({}, False, 0.0, True),
    "dpq-gar+gs+dh+aq0.5": ({"group_search": True}, True, 0.5, False),
    "dpq-gar+gs+dh+aq1": ({"group_search": True}, True, 1.0, False),
    "dpq-gar+gs+dh+aq0.5+sm": ({"group_search": True}, True, 0.5, True),
}


@torch.no_grad()
def capture(model, layer_ids, calib: torch.Tensor, held: torch.Tensor, batch: int, keep_calib: bool = False):
    """Run the model; per Linear: Hessian, calibration max|x| and held-out inputs [T, K]
    (and the calibration inputs with keep_calib)."""
    stats, mode = {}, {"phase": "calib"}
    blocks = get_submodule(model, spec_for(model.config).layers)
    for li in layer_ids:
        for name in spec_for(model.config).linears:
            mod = get_submodule(blocks[li], name)
            stats[f"layers.{li}.{name}"] = {"acc": HessianAccumulator(mod.in_features, f"layers.{li}.{name}"),
                                            "amax": 0.0, "held": [], "mod": mod}

    def on_input(li, name, x):
        x, st = flat_float(x), stats[f"layers.{li}.{name}"]
        if mode["phase"] == "calib":
            st["acc"].add(x)
            st["amax"] = max(st["amax"], float(x.abs().max()))
            if keep_calib:
                st.setdefault("calib", []).append(x.clone())
        else:
            st["held"].append(x.clone())

    with watch_model_linears(model, on_input, layers=layer_ids):
        for phase, ids in (("calib", calib), ("held", held)):
            mode["phase"] = phase
            for i in range(0, ids.shape[0], batch):
                decoder(model)(input_ids=ids[i : i + batch])  # the decoder only: no lm_head / logits
    return stats


def run_model(model_name: str, args) -> list[dict]:
    t0 = time.perf_counter()
    model, tok, _ = load_float_model(model_name)
    calib = calibration_batches(tok, "wikitext2", args.samples, args.seq_len, seed=0)
    held = calibration_batches(tok, "wikitext2", args.held_samples, args.seq_len, seed=1)
    n = len(get_submodule(model, spec_for(model.config).layers))
    layer_ids = sorted({0, n // 2, n - 1})
    stats = capture(model, layer_ids, calib, held, args.batch, keep_calib=args.options)
    print(f"[{model_name}] captured {len(stats)} Linears of layers {layer_ids} in {time.perf_counter() - t0:.0f}s")
    rows = []
    smooth_rows = [k for k, v in OPTION_ROWS.items() if v[3] and (not args.rows or k in args.rows)]
    scales = set_scales(model, stats, args) if args.options and smooth_rows else {}
    capture_threads = torch.get_num_threads()
    torch.set_num_threads(args.solve_threads)  # the column loop is many small ops: threads only contend
    for key, st in stats.items():
        w = st["mod"].weight.detach().float()
        h = st["acc"].hessian()
        x = torch.cat(st["held"])
        for label, kw in METHODS.items():
            if args.rows and label not in args.rows:
                continue
            cfg = QuantConfig.for_method(
                kw["method"], group_size=args.group_size, fp8_max=args.fp8_max,
                group_params=kw.get("group_params", "updated"),
            )
            qw = solve(w, h, cfg, name=key)
            s_x = st["amax"] / args.fp8_max if cfg.fp8.enabled else None
            rows.append({
                "model": model_name, "layer": key, "method": label, "shape": list(w.shape),
                "err": relative_output_error(w, qw, x, act_scale=s_x),
                "err_h": relative_output_error(w, qw, h),
                "solve_seconds": qw.solve_seconds,
            })
        if args.options:
            rows += option_rows(model_name, key, w, st, scales.get(key), args)
        print(f"[{model_name}] {key} done", flush=True)
    torch.set_num_threads(capture_threads)
    del model
    return rows


def set_scales(model, stats: dict, args) -> dict[str, torch.Tensor]:
    """{Linear key: smoothing scales [K] of its set} chosen by the driver's search on calibration inputs."""
    spec = spec_for(model.config)
    cfg = QuantConfig.for_method("dpq-gar", group_size=args.group_size, fp8_max=args.fp8_max)
    out = {}
    layer_ids = sorted({int(k.split(".")[1]) for k in stats})
    for li in layer_ids:
        for names in spec.sequence:
            keys = [f"layers.{li}.{n}" for n in names]
            sample, amax = sample_tokens(stats[keys[0]]["calib"], SAMPLE_TOKENS, 0)
            weights = [stats[k]["mod"].weight.detach().float() for k in keys]
            tie = kv_tie(model.config) if names[0] == spec.attention_output else None
            s, _ = search_scales(weights, sample, amax, cfg, tie)
            for k in keys:
                out[k] = s
    return out


def option_rows(model_name: str, key: str, w: torch.Tensor, st: dict, s: torch.Tensor | None, args) -> list[dict]:
    """One row per OPTION_ROWS label for this Linear (held-out deployed error, as the other rows)."""
    rows = []
    x_cal = torch.cat(st["calib"])  # (T, K) float inputs
    x_held = torch.cat(st["held"])
    for label, (opts, deployed, alpha, smooth) in OPTION_ROWS.items():
        if args.rows and label not in args.rows:
            continue
        cfg = QuantConfig.for_method("dpq-gar", group_size=args.group_size, fp8_max=args.fp8_max, **opts)
        scale = s if smooth and s is not None else torch.ones(w.shape[1])
        ws, xc, xh = w * scale, x_cal / scale, x_held / scale  # the float function is unchanged
        s_x = float(xc.abs().max()) / args.fp8_max
        xd = quantize_activation(xc, s_x, args.fp8_max) * s_x if deployed else xc
        acc = HessianAccumulator(w.shape[1], key)
        acc.add(xd)
        h = acc.hessian()
        target = ws
        if alpha > 0:  # C = (X - X_deployed)^T X_deployed: the layer's own FP8 input error
            cross = CrossAccumulator(w.shape[1], key)
            cross.add(xc, xd)
            target = asymmetric_target(ws, h, cross.cross(), alpha, cfg.solver.damp)
        qw = solve(target, h, cfg, name=key)
        rows.append({
            "model": model_name, "layer": key, "method": label, "shape": list(w.shape),
            "err": relative_output_error(ws, qw, xh, act_scale=s_x),
            "err_h": relative_output_error(ws, qw, h), "solve_seconds": qw.solve_seconds,
        })
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    labels = list(METHODS) + [m for m in OPTION_ROWS if any(r["method"] == m for r in rows)]
    for model in dict.fromkeys(r["model"] for r in rows):
        for method in labels:
            rs = [r for r in rows if r["model"] == model and r["method"] == method]
            if not rs:
                continue
            worst = max(rs, key=lambda r: r["err"])
            out.append({
                "model": model, "method": method, "mean_err": statistics.mean(r["err"] for r in rs),
                "mean_err_h": statistics.mean(r["err_h"] for r in rs),
                "worst_layer": worst["layer"], "worst_err": worst["err"],
                "mean_solve_seconds": statistics.mean(r["solve_seconds"] for r in rs), "n_linears": len(rs),
            })
    return out


def table(summary: list[dict]) -> str:
    lines = [
        "| model | method | mean err (deployed, held-out) | mean err_h (weight only, calib H) | worst layer | worst err | solve s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        lines.append(
            f"| {s['model']} | {s['method']} | {s['mean_err']:.5f} | {s['mean_err_h']:.5f} | "
            f"{s['worst_layer']} | {s['worst_err']:.5f} | {s['mean_solve_seconds']:.3f} |"
        )
    return "\n".join(lines)


def against_dpq_gar(summary: list[dict], rows: list[dict]) -> list[dict]:
    """Per option row: mean err relative to dpq-gar's, and on how many Linears it is lower."""
    out = []
    base = {(r["model"], r["layer"]): r["err"] for r in rows if r["method"] == "dpq-gar"}
    for s in summary:
        if s["method"] not in OPTION_ROWS:
            continue
        mine = [r for r in rows if r["model"] == s["model"] and r["method"] == s["method"]]
        better = sum(r["err"] < base[(r["model"], r["layer"])] for r in mine)
        ref = next(x["mean_err"] for x in summary if x["model"] == s["model"] and x["method"] == "dpq-gar")
        out.append({"model": s["model"], "method": s["method"], "mean_err": s["mean_err"],
                    "ratio_to_dpq_gar": s["mean_err"] / ref, "linears_better": better, "n_linears": len(mine)})
    return out


def ordering(summary: list[dict]) -> dict[str, bool]:
    """Does dpq-gar <= dpq < naive-w4a8 < rtn-w4a8 hold in mean deployed error, per model?"""
    res = {}
    for model in dict.fromkeys(s["model"] for s in summary):
        e = {s["method"]: s["mean_err"] for s in summary if s["model"] == model}
        if all(m in e for m in ("dpq-gar", "dpq", "naive-w4a8", "rtn-w4a8")):
            res[model] = e["dpq-gar"] <= e["dpq"] < e["naive-w4a8"] < e["rtn-w4a8"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="output JSON file (a .md table is written next to it)")
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--samples", type=int, default=32, help="calibration windows")
    ap.add_argument("--held-samples", type=int, default=8, help="held-out windows for the error")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--fp8-max", type=float, default=448.0)
    ap.add_argument("--solve-threads", type=int, default=1, help="torch threads while solving")
    ap.add_argument("--options", action="store_true", help="also the dpq-gar rows with the options beyond the paper")
    ap.add_argument("--rows", type=lambda t: [r for r in t.split(",") if r], default=None,
                    help="only these rows (comma-separated labels; default all)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for m in args.models.split(","):
        rows += run_model(m.strip(), args)
        write(rows, args)  # after every model, so a slow run leaves partial results
    summary = write(rows, args)
    print(table(summary))
    print("ordering dpq-gar <= dpq < naive-w4a8 < rtn-w4a8:", ordering(summary))
    for r in against_dpq_gar(summary, rows):
        print(f"{r['model']} {r['method']}: {r['ratio_to_dpq_gar']:.4f} x dpq-gar, lower on {r['linears_better']}/{r['n_linears']}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write(rows: list[dict], args) -> list[dict]:
    summary = summarize(rows)
    result = {
        "meta": {"command": "python " + " ".join(sys.argv), "commit": _commit(),
                 "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": "cpu"}},
        "device": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "numerics": "asymmetric INT4, bf16 group scales; W4A8: static max-abs per-tensor FP8 activations",
        "summary": summary, "ordering_dpq-gar<=dpq<naive<rtn": ordering(summary), "rows": rows,
        "options_against_dpq_gar": against_dpq_gar(summary, rows),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    Path(args.json).with_suffix(".md").write_text(table(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
