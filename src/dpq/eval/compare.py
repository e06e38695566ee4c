"""Quantize one float model with several methods and evaluate each against the float model.

The float model is loaded once; every method quantizes a fresh deep copy of
it with the same calibration batches (drawn once, same seed), and each result
is one `dpq.eval.run.evaluate` dict.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import time
from collections.abc import Callable

from dpq.config import METHODS, CalibSpec, QuantConfig
from dpq.eval.run import evaluate
from dpq.eval.tasks import resolve_tasks

FLOAT = "bf16"
"""The label of the unquantized model in a comparison (kept in its loaded float dtype)."""

DEFAULT_METHODS = (FLOAT, "rtn-w4a16", "gptq-w4a16", "rtn-w4a8", "naive-w4a8", "dpq", "dpq-gar")


def _check_methods(methods) -> list[str]:
    methods = list(methods)
    bad = [m for m in methods if m != FLOAT and m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(bad)}: use {FLOAT} or one of {', '.join(METHODS)}")
    if not methods:
        raise ValueError("no methods to compare")
    return methods


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _default_quantize(model, tokenizer, config, calib=None, device="cpu", progress=True):
    from dpq.api import quantize  # noqa: PLC0415

    quantize(model, tokenizer, config=config, calib=calib, device=device, progress=progress)  # in place
    return model


def compare(
    model_name: str | None = None,
    methods=DEFAULT_METHODS,
    quant_kwargs: dict | None = None,
    eval_kwargs: dict | None = None,
    *,
    device: str = "cpu",
    calib=None,
    quantize_fn: Callable | None = None,
    loader: Callable | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate the float model ("bf16") and each quantization method on the same data.

    model_name: as the CLI's MODEL (bundled name, directory, .gguf, hub name).
    quant_kwargs: keyword arguments of `QuantConfig.for_method` (group_size, calib=CalibSpec(...), ...).
    eval_kwargs: keyword arguments of `evaluate` (ppl, seq_len, max_windows, tasks, limit, ...).
    calib: calibration batches [samples, seq_len]; None draws them once from the config's CalibSpec.
    quantize_fn(model, tokenizer, config=, calib=, device=, progress=) -> model: defaults to
        `dpq.api.quantize`; injectable for tests. loader(model_name) -> (model, tokenizer, name):
        defaults to `dpq.models.loading.load_float_model`.
    Returns {"model", "methods", "results": {method: evaluate-dict}, "calibration", "quant_kwargs"}.
    """
    methods = _check_methods(methods)
    quant_kwargs = dict(quant_kwargs or {})
    eval_kwargs = {k: v for k, v in (eval_kwargs or {}).items() if k not in ("name", "progress")}
    device = eval_kwargs.pop("device", device)
    resolve_tasks(eval_kwargs.get("tasks", ()))  # fail on a bad task name before loading anything
    configs = {m: QuantConfig.for_method(m, **quant_kwargs) for m in methods if m != FLOAT}
    quantize_fn = quantize_fn or _default_quantize
    if loader is None:
        from dpq.models.loading import load_float_model  # noqa: PLC0415

        def loader(name):
            m, t, src = load_float_model(name)
            return m, t, src.name

    float_model, tok, name = loader(model_name)
    calib_spec: CalibSpec = quant_kwargs.get("calib") or CalibSpec()
    calib_info = None
    if configs and calib is None:
        from dpq.io.data import calibration_batches, fingerprint  # noqa: PLC0415

        calib = calibration_batches(tok, calib_spec.source, calib_spec.samples, calib_spec.seq_len, calib_spec.seed)
        calib_info = {**dataclasses.asdict(calib_spec), "fingerprint": fingerprint(calib)}
    results = {}
    for method in methods:
        t0 = time.perf_counter()
        if method == FLOAT:
            model = float_model
        else:
            model = copy.deepcopy(float_model)
            model = quantize_fn(model, tok, config=configs[method], calib=calib, device=device, progress=progress)
        quant_s = time.perf_counter() - t0
        res = evaluate(model, tok, name=name, device=device, progress=progress, **eval_kwargs)
        res["method"] = method
        res["settings"]["timings"]["quantize_s"] = round(quant_s, 1)
        results[method] = res
        if model is not float_model:
            del model
            gc.collect()
    return {
        "model": name,
        "methods": methods,
        "results": results,
        "calibration": calib_info,
        "quant_kwargs": {k: _plain(v) for k, v in quant_kwargs.items()},
    }
