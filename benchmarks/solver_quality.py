"""Layer-level quality of every solver on real decoder layers.

For each model, the first, middle and last decoder layers: every Linear's real
inputs are captured with forward hooks while the float model runs over
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
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dpq.algorithms import HessianAccumulator, relative_output_error, solve
from dpq.config import QuantConfig
from dpq.io.data import calibration_batches
from dpq.models.loading import load_float_model

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


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of a Llama/Gemma-style causal LM (model.model.layers)."""
    return model.model.layers


@torch.no_grad()
def capture(model, layer_ids, calib: torch.Tensor, held: torch.Tensor, batch: int):
    """Run the model; per Linear: Hessian, calibration max|x| and held-out inputs [T, K]."""
    layers = decoder_layers(model)
    stats, mode = {}, {"phase": "calib"}
    hooks = []
    for li in layer_ids:
        for name, mod in layers[li].named_modules():
            if isinstance(mod, torch.nn.Linear):
                key = f"layers.{li}.{name}"
                stats[key] = {"acc": HessianAccumulator(mod.in_features, key), "amax": 0.0, "held": [], "mod": mod}

                def hook(m, inp, out, key=key):
                    x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
                    st = stats[key]
                    if mode["phase"] == "calib":
                        st["acc"].add(x)
                        st["amax"] = max(st["amax"], float(x.abs().max()))
                    else:
                        st["held"].append(x.clone())

                hooks.append(mod.register_forward_hook(hook))
    try:
        for phase, ids in (("calib", calib), ("held", held)):
            mode["phase"] = phase
            for i in range(0, ids.shape[0], batch):
                model.model(input_ids=ids[i : i + batch])  # the decoder only: no lm_head / logits
    finally:
        for h in hooks:
            h.remove()
    return stats


def run_model(model_name: str, args) -> list[dict]:
    t0 = time.perf_counter()
    model, tok, _ = load_float_model(model_name)
    calib = calibration_batches(tok, "wikitext2", args.samples, args.seq_len, seed=0)
    held = calibration_batches(tok, "wikitext2", args.held_samples, args.seq_len, seed=1)
    n = len(decoder_layers(model))
    layer_ids = sorted({0, n // 2, n - 1})
    stats = capture(model, layer_ids, calib, held, args.batch)
    print(f"[{model_name}] captured {len(stats)} Linears of layers {layer_ids} in {time.perf_counter() - t0:.0f}s")
    rows = []
    capture_threads = torch.get_num_threads()
    torch.set_num_threads(args.solve_threads)  # the column loop is many small ops: threads only contend
    for key, st in stats.items():
        w = st["mod"].weight.detach().float()
        h = st["acc"].hessian()
        x = torch.cat(st["held"])
        for label, kw in METHODS.items():
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
        print(f"[{model_name}] {key} done", flush=True)
    torch.set_num_threads(capture_threads)
    del model
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for method in METHODS:
            rs = [r for r in rows if r["model"] == model and r["method"] == method]
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


def ordering(summary: list[dict]) -> dict[str, bool]:
    """Does dpq-gar <= dpq < naive-w4a8 < rtn-w4a8 hold in mean deployed error, per model?"""
    res = {}
    for model in dict.fromkeys(s["model"] for s in summary):
        e = {s["method"]: s["mean_err"] for s in summary if s["model"] == model}
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
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for m in args.models.split(","):
        rows += run_model(m.strip(), args)
        write(rows, args)  # after every model, so a slow run leaves partial results
    summary = write(rows, args)
    print(table(summary))
    print("ordering dpq-gar <= dpq < naive-w4a8 < rtn-w4a8:", ordering(summary))


def write(rows: list[dict], args) -> list[dict]:
    summary = summarize(rows)
    result = {
        "device": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "numerics": "asymmetric INT4, bf16 group scales; W4A8: static max-abs per-tensor FP8 activations",
        "summary": summary, "ordering_dpq-gar<=dpq<naive<rtn": ordering(summary), "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    Path(args.json).with_suffix(".md").write_text(table(summary) + "\n")
    return summary


if __name__ == "__main__":
    main()
