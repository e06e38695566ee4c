"""End-to-end W4A8 benchmark: a Llama-3-8B-shaped model (random weights) in BF16 and with W4A8 Linears.

Every Linear of every decoder layer becomes a W4A8Linear (RTN INT4 g128,
asymmetric, F = 448, built with dpq.numerics; a fixed activation scale, since
random weights have no calibration data). Reports decode tokens/s at several
batch sizes, prefill tokens/s, and the weight memory of both models. Needs a
CUDA GPU with FP8 (SM89+); no hub access is needed (the model is built from a
LlamaConfig).

    python benchmarks/e2e.py --layers 8 --json out/e2e.json   # on the GPU (32 layers: ~16 GB BF16)
    python benchmarks/e2e.py --dry-run                        # CPU smoke test (tiny model, Triton interpreter)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

F = 448.0
GROUP = 128
ACT_SCALE = 0.02  # s_x for every Linear: random weights give no calibration data; speed does not depend on it


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32, help="decoder layers to build (Llama-3-8B has 32)")
    p.add_argument("--batches", default="1,8,32", help="decode batch sizes")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps timed per batch size")
    p.add_argument("--prefill", type=int, default=2048, help="prefill length (batch 1)")
    p.add_argument("--compile", action="store_true",
                   help="decode with a static cache and torch.compile(mode='reduce-overhead') (CUDA graphs)")
    p.add_argument("--json", help="write results to this JSON file")
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU under TRITON_INTERPRET=1")
    return p.parse_args(argv)


def llama3_8b_config(layers: int, tiny: bool):
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)


def build_model(cfg, device):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def quantize_linear(lin: nn.Linear):
    """nn.Linear -> W4A8Linear by the library's round to nearest (`rtn-w4a8`: per-tensor power-of-two s_w,
    asymmetric INT4 groups in the FP8 domain) with a fixed static input scale (random weights, no calibration)."""
    from dpq.algorithms.rtn import rtn_solve
    from dpq.config import QuantConfig
    from dpq.nn.linear import W4A8Linear

    w = lin.weight.detach().float()
    g = min(GROUP, w.shape[1])  # the tiny dry-run model has K = 64
    qw = rtn_solve(w, QuantConfig.for_method("rtn-w4a8", group_size=g, fp8_max=F))
    q = W4A8Linear.from_quantized(qw, lin.bias)
    q.set_input_scale(ACT_SCALE)
    return q


def quantize_decoder(model) -> None:
    """Replace every nn.Linear inside the decoder layers, one at a time (peak memory: one layer's fp32 copy)."""
    for layer in model.model.layers:
        for name, mod in list(layer.named_modules()):
            if isinstance(mod, nn.Linear):
                parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
                setattr(parent, name.rsplit(".", 1)[-1], quantize_linear(mod))


def decoder_weight_bytes(model) -> int:
    from dpq.nn.linear import W4A8Linear

    total = 0
    for mod in model.model.layers.modules():
        if isinstance(mod, W4A8Linear):
            total += mod.weight_bytes()
        elif isinstance(mod, nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
    return total


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_tps(model, batch, steps, device, compiled: bool, prompt: int = 16) -> float:
    """Tokens/s of `steps` greedy decode steps after a `prompt`-token prefill (not timed)."""
    from transformers import DynamicCache, StaticCache

    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device)
    if compiled:
        cache = StaticCache(config=model.config, max_cache_len=prompt + steps + 8)
    else:
        cache = DynamicCache()
    pos = torch.arange(prompt, device=device)
    out = model(ids, past_key_values=cache, use_cache=True, cache_position=pos, logits_to_keep=1)
    nxt = out.logits[:, -1:].argmax(-1)
    times = []
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        out = model(nxt, past_key_values=cache, use_cache=True,
                    cache_position=torch.tensor([prompt + i], device=device), logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)
        sync(device)
        times.append(time.perf_counter() - t0)
    warm = times[min(3, len(times) - 1):]  # the first steps compile / capture graphs
    return batch / statistics.median(warm)


@torch.no_grad()
def prefill_tps(model, tokens, device, reps=5) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)
    times = []
    for _ in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        model(ids, use_cache=False, logits_to_keep=1)
        sync(device)
        times.append(time.perf_counter() - t0)
    return tokens / statistics.median(times[1:])  # first run: autotuning and warm-up


def measure(model, label, args, device) -> dict:
    res = {"model": label, "decoder_weight_MB": decoder_weight_bytes(model) / 1e6, "decode": {}, "notes": []}
    fwd = model.forward
    if args.compile:
        try:
            model.forward = torch.compile(fwd, mode="reduce-overhead", dynamic=False)
        except Exception as e:  # noqa: BLE001
            res["notes"].append(f"torch.compile unavailable: {type(e).__name__}: {e}")
    for b in args.batch_list:
        try:
            res["decode"][b] = decode_tps(model, b, args.decode_tokens, device, args.compile)
        except Exception as e:  # noqa: BLE001 - compiled decode may fail on some stacks: fall back to eager
            if not args.compile:
                raise
            res["notes"].append(f"batch {b}: compiled decode failed ({type(e).__name__}: {str(e)[:120]}); eager")
            model.forward = fwd
            res["decode"][b] = decode_tps(model, b, args.decode_tokens, device, False)
    model.forward = fwd
    res["prefill"] = prefill_tps(model, args.prefill, device)
    return res


def table(results, args) -> str:
    bs = args.batch_list
    head = f"{'model':<8}{'weights MB':>11}" + "".join(f"{'dec b' + str(b):>11}" for b in bs) + \
        f"{'prefill ' + str(args.prefill):>14}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['model']:<8}{r['decoder_weight_MB']:>11.1f}" + "".join(f"{r['decode'][b]:>11.1f}" for b in bs)
                     + f"{r['prefill']:>14.0f}")
    lines.append("decode: tokens/s over the batch; prefill: tokens/s at batch 1; weights: decoder Linears only")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before dpq.kernels.triton_w4a8 is imported
        device = torch.device("cpu")
        args.layers, args.batch_list, args.decode_tokens, args.prefill = 2, [1, 2], 4, 16
        args.compile = False
    else:
        if not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)):
            print("benchmarks/e2e.py needs a CUDA GPU with FP8 (SM89+); none found. "
                  "Use --dry-run for a CPU smoke test of the script.", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        args.batch_list = [int(b) for b in args.batches.split(",")]
    from dpq.kernels import ops

    ops.set_backend("triton")  # the W4A8 model must run the kernel (on the CPU: the interpreter)
    cfg = llama3_8b_config(args.layers, tiny=args.dry_run)
    model = build_model(cfg, device)
    results = [measure(model, "bf16", args, device)]
    quantize_decoder(model)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    results.append(measure(model, "w4a8", args, device))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET=1, not a measurement)"
    print(f"device: {name}; layers: {args.layers}; compile: {args.compile}")
    print(table(results, args))
    for r in results:
        for note in r["notes"]:
            print(f"  {r['model']}: {note}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = dict(device=name, torch=torch.__version__, layers=args.layers, compile=args.compile,
                    decode_tokens=args.decode_tokens, prefill=args.prefill, group_size=GROUP, fp8_max=F,
                    dry_run=args.dry_run)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
