"""gpu_suite.py's end-to-end section: an 8-layer Llama-3-8B-shaped model (random weights), BF16 and W4A8.

Decode: a static KV cache and one decode step captured in a CUDA graph (the step's argmax feeds the
next step's input inside the graph; the cache advances its own device-side position), replayed
`DECODE_STEPS` times between CUDA events; batch 1 and 8. The full model and the decoder alone
(`model.model`: no lm_head, which stays BF16 in both models and, with 8 of Llama-3-8B's 32 layers,
weighs as much as the W4A8 decoder). Prefill: 2048 tokens at batch 1, eager, with the large-M
rule's path and with the fused kernel forced. The W4A8 model is the BF16 model with every decoder
Linear replaced by RTN W4A8 (benchmarks/e2e.py's quantize_decoder).
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import time

import torch

LAYERS, BATCHES, DECODE_STEPS, PREFILL = 8, (1, 8), 32, 2048
DRY = dict(layers=1, batches=(1,), steps=2, prefill=16)
"""The dry run: a tiny model on the CPU whose W4A8 Linears run the reference backend (the Triton
interpreter would take minutes; the kernels' CPU coverage is tests/kernels)."""


@contextlib.contextmanager
def large_m_threshold(value: int):
    """Run with triton_w4a8.LARGE_M_THRESHOLD set to `value` (choose_path reads it at every call)."""
    from dpq.kernels import triton_w4a8 as tk

    old, tk.LARGE_M_THRESHOLD = tk.LARGE_M_THRESHOLD, value
    try:
        yield
    finally:
        tk.LARGE_M_THRESHOLD = old


def _cache_kwarg(fn) -> str:
    """transformers 5.17 calls the cache `past_key_values`, 5.24 `cache` (the old name still works there)."""
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


@torch.no_grad()
def decode_tps(model, batch: int, steps: int, graphs: bool, decoder_only: bool, prompt: int = 16) -> dict:
    """Tokens/s of `steps` decode steps after a `prompt`-token prefill (not timed)."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    cache = StaticCache(config=model.config, max_cache_len=prompt + steps + 16)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device)
    out = model(ids, use_cache=True, logits_to_keep=1, **{_cache_kwarg(model.forward): cache})
    tok = out.logits[:, -1:].argmax(-1)  # [B, 1], the input of every step
    body = model.model if decoder_only else model
    kw = {_cache_kwarg(body.forward): cache, "use_cache": True, **({} if decoder_only else {"logits_to_keep": 1})}

    def step():
        o = body(tok, **kw)
        if not decoder_only:
            tok.copy_(o.logits[:, -1:].argmax(-1))

    for _ in range(3 if device.type == "cuda" else 1):  # autotuning of the M = batch kernels, the lazy cache
        step()
    res = {"batch": batch, "steps": steps, "graphs": False}
    run = step
    if graphs:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            run, res["graphs"] = graph.replay, True
        except Exception as e:  # noqa: BLE001 - recorded; the eager step is timed instead
            res["graph_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            torch.cuda.synchronize()
    seconds = _time(run, steps, device)
    return {**res, "tokens_per_s": batch * steps / seconds, "ms_per_step": 1e3 * seconds / steps}


def _time(fn, reps: int, device) -> float:
    """Seconds for `reps` calls of fn: CUDA events on a GPU, the wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return time.perf_counter() - t


@torch.no_grad()
def prefill_tps(model, tokens: int, reps: int) -> float:
    """Tokens/s of a batch-1 forward over `tokens` tokens (median of reps after one warm-up)."""
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)
    fn = lambda: model(ids, use_cache=False, logits_to_keep=1)  # noqa: E731
    fn()
    return tokens / statistics.median(_time(fn, 1, device) for _ in range(reps))


def measure(s, model, batches, steps, prefill, label) -> dict:
    res = {"model": label, "decode": {}, "decode_decoder_only": {}}
    graphs = s.device.type == "cuda"
    for b in batches:
        for key, only in (("decode", False), ("decode_decoder_only", True)):
            if s.left() > 0:
                res[key][str(b)] = decode_tps(model, b, steps, graphs, only, prompt=4 if s.dry else 16)
    if s.left() > 0:
        res["prefill_tps"] = prefill_tps(model, prefill, 1 if s.dry else 3)
    return res


def e2e(s) -> dict:
    E = s.load("e2e")
    from dpq.kernels import ops

    layers, batches, steps, prefill = (DRY["layers"], DRY["batches"], DRY["steps"], DRY["prefill"]) if s.dry \
        else (LAYERS, BATCHES, DECODE_STEPS, PREFILL)
    model = E.build_model(E.llama3_8b_config(layers, tiny=s.dry), s.device)
    ops.set_backend("reference" if s.dry else "triton")  # on the GPU the W4A8 Linears must run the kernels
    try:
        res = {"layers": layers, "bf16": measure(s, model, batches, steps, prefill, "bf16")}
        res["bf16"]["decoder_weight_MB"] = E.decoder_weight_bytes(model) / 1e6
        E.quantize_decoder(model)
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
        w = res["w4a8"] = measure(s, model, batches, steps, prefill, "w4a8")
        w["decoder_weight_MB"] = E.decoder_weight_bytes(model) / 1e6
        if s.left() > 0:
            with large_m_threshold(1 << 62):  # the fused kernel at every M
                w["prefill_tps_fused_path"] = prefill_tps(model, prefill, 1 if s.dry else 3)
    finally:
        ops.set_backend(None)
    res["ratios"] = ratios(res)
    return res


def ratios(res: dict) -> dict:
    """W4A8 over BF16 for every number both models have (>1: W4A8 faster)."""
    b, w, out = res["bf16"], res.get("w4a8", {}), {}
    for key in ("decode", "decode_decoder_only"):
        for batch, r in w.get(key, {}).items():
            if batch in b.get(key, {}):
                out[f"{key}_b{batch}"] = r["tokens_per_s"] / b[key][batch]["tokens_per_s"]
    for key in ("prefill_tps", "prefill_tps_fused_path"):
        if key in w and "prefill_tps" in b:
            out[key.replace("_tps", "")] = w[key] / b["prefill_tps"]
    return out
