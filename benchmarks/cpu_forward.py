"""What the reference path's float32 weight cache buys on the CPU: forward time of a W4A8 checkpoint.

    python benchmarks/cpu_forward.py CHECKPOINT [--shapes 1x60,4x256] [--repeats 10] [--threads 2] \
        [--json benchmarks/results/cpu_forward.json] [--markdown FILE.md]

For each input shape (batch x tokens, random token ids), times the model's forward with
`DPQ_FLOAT_CACHE=off` (the FP8 weight is cast to float32 on every call) and `on` (an exact
float32 copy is kept per Linear), after one warm-up forward each, and checks that the logits
are bit-identical. Reports the median time over --repeats, the speed-up, and the memory the
cache takes. Timings depend on the machine and on anything else running on it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dpq.api import load_any
from dpq.kernels import ops
from dpq.nn.linear import W4A8Linear


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """"1x60,4x256" -> [(1, 60), (4, 256)]; a clear error for anything else."""
    shapes = []
    for part in text.split(","):
        try:
            b, t = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: {part!r} is not BATCHxTOKENS (e.g. 1x60,4x256)") from None
        if b < 1 or t < 1:
            raise SystemExit(f"--shapes: {part!r} needs a batch and a token count of at least 1")
        shapes.append((b, t))
    return shapes


def cache_bytes(model: torch.nn.Module) -> int:
    return sum(m._float_cache.numel() * 4 for m in model.modules()
               if isinstance(m, W4A8Linear) and m._float_cache is not None)


def time_forward(model, ids: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """(median ms, logits) of `repeats` forwards after one warm-up."""
    with torch.no_grad():
        logits = model(ids).logits
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(ids)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), logits


def run(checkpoint: str, shapes: list[tuple[int, int]], repeats: int) -> dict:
    model, _tok, name = load_any(checkpoint)
    if not any(isinstance(m, W4A8Linear) for m in model.modules()):
        raise SystemExit(f"{checkpoint}: no W4A8 Linear in this model; give a dpq checkpoint directory")
    model.eval()
    vocab = model.config.vocab_size
    rows = []
    try:
        for b, t in shapes:
            ids = torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(0))
            ops.set_float_cache("off")
            for m in model.modules():
                if isinstance(m, W4A8Linear):
                    m._float_cache = None
            off_ms, off_logits = time_forward(model, ids, repeats)
            ops.set_float_cache("on")
            on_ms, on_logits = time_forward(model, ids, repeats)
            rows.append({"batch": b, "tokens": t, "off_ms": off_ms, "on_ms": on_ms, "speedup": off_ms / on_ms,
                         "identical": bool(torch.equal(off_logits, on_logits))})
    finally:
        ops.set_float_cache(None)
    return {"model": name, "device": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "repeats": repeats,
            "cache_bytes": cache_bytes(model), "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"Forward of `{result['model']}` on the CPU ({result['device']}), {result['threads']} threads, median of "
             f"{result['repeats']}; float32 cache {result['cache_bytes'] / 2**20:.0f} MiB",
             "", "| batch x tokens | cache off ms | cache on ms | speed-up | logits identical |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['batch']} x {r['tokens']} | {r['off_ms']:.0f} | {r['on_ms']:.0f} | "
                     f"{r['speedup']:.2f}x | {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a dpq W4A8 checkpoint directory")
    p.add_argument("--shapes", default="1x60,4x256", help="BATCHxTOKENS,... (default 1x60,4x256)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--markdown", help="write the table here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run(args.checkpoint, parse_shapes(args.shapes), args.repeats)
    table = markdown(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    if not all(r["identical"] for r in result["rows"]):
        raise SystemExit("logits differ with and without the cache: the cache is not exact")
    return result


if __name__ == "__main__":
    main()
