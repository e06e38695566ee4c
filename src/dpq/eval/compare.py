"""Quantize one float model with several methods and evaluate each against the float model.

The float model is loaded once; every method quantizes a fresh deep copy of
it with the same calibration batches (drawn once, same seed), and each result
is one `dpq.eval.run.evaluate` dict.

With `save_dir`, each quantized model is also written as a checkpoint
`save_dir/<method>`; a later comparison with the same settings and the same
calibration tokens loads those checkpoints instead of quantizing again (so a
long grid can be re-evaluated with other tasks, or resumed after a stop).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dpq.config import METHODS, CalibSpec, QuantConfig
from dpq.eval.run import evaluate
from dpq.eval.tasks import resolve_tasks

FLOAT = "bf16"
"""The label of the unquantized model in a comparison (kept in its loaded float dtype)."""

DEFAULT_METHODS = (FLOAT, "rtn-w4a16", "gptq-w4a16", "rtn-w4a8", "naive-w4a8", "dpq", "dpq-gar", "dpq-gar-plus")


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
    """dpq.quantize (in place); returns its QuantResult."""
    from dpq.api import quantize  # noqa: PLC0415

    return quantize(model, tokenizer, config=config, calib=calib, device=device, progress=progress)


def load_float(model_name: str | None, loader: Callable | None = None, dtype="float32") -> tuple:
    """(model, tokenizer, name, reference) of the float model to compare.

    reference is what saved checkpoints record as their source model: the loaded model's
    reference (`dpq.models.loading.load_float_model`), or model_name with an injected
    loader(model_name) -> (model, tokenizer, name).
    """
    if loader is not None:
        return (*loader(model_name), model_name)
    from dpq.models.loading import load_float_model  # noqa: PLC0415

    model, tok, src = load_float_model(model_name, dtype=dtype)
    return model, tok, src.name, src.reference


def _reusable(path: Path, config: QuantConfig, calib_info: dict | None) -> dict | None:
    """The quantization block of `path` if it is a checkpoint of `config` on the same calibration tokens;
    None if absent.

    Raises ValueError for anything else at that path, so a result is never mixed with another run's.
    """
    from dpq.io.checkpoint import is_checkpoint, read_quant_block  # noqa: PLC0415

    if not path.exists():
        return None
    if not is_checkpoint(path):
        raise ValueError(f"{path} exists and is not a dpq checkpoint: remove it or choose another save directory")
    block = read_quant_block(path)
    if block["config"] != config:
        raise ValueError(f"{path} was quantized with other settings ({block['settings']}): remove it or choose "
                         "another save directory")
    theirs = (block.get("calibration") or {}).get("fingerprint")
    ours = (calib_info or {}).get("fingerprint")
    if theirs is None or theirs != ours:
        raise ValueError(f"{path} was calibrated on other tokens (fingerprint {theirs}, this run {ours}): "
                         "remove it or choose another save directory")
    return block


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
    save_dir: str | None = None,
    on_result: Callable[[dict], None] | None = None,
    dtype="float32",
) -> dict:
    """Evaluate the float model ("bf16") and each quantization method on the same data.

    model_name: as the CLI's MODEL (bundled name, directory, .gguf, hub name).
    quant_kwargs: keyword arguments of `QuantConfig.for_method` (group_size, calib=CalibSpec(...), ...).
    eval_kwargs: keyword arguments of `evaluate` (ppl, seq_len, max_windows, tasks, limit, ...).
    calib: calibration batches [samples, seq_len]; None draws them once from the config's CalibSpec.
    quantize_fn(model, tokenizer, config=, calib=, device=, progress=) -> QuantResult (or the model):
        defaults to `dpq.api.quantize`; injectable for tests. loader(model_name) -> (model, tokenizer, name):
        defaults to `dpq.models.loading.load_float_model`.
    save_dir: write each quantized model to save_dir/<method> (atomic), or load it from there when a
        checkpoint of the same settings and calibration tokens is already present (see the module doc).
    dtype: of the float model ("auto": the source's own; dpq quantize's default).
    on_result(partial) is called after each method with the comparison so far (for incremental output).
    Returns {"model", "methods", "results": {method: evaluate-dict}, "calibration", "quant_kwargs"}; each
    quantized method's result also holds "concentrated": {Linear: top-token share} for the Linears whose
    calibration inputs a few tokens dominated (see `dpq.models.driver.concentrated`), {} when none did.
    """
    methods = _check_methods(methods)
    quant_kwargs = dict(quant_kwargs or {})
    eval_kwargs = {k: v for k, v in (eval_kwargs or {}).items() if k not in ("name", "progress")}
    device = eval_kwargs.pop("device", device)
    resolve_tasks(eval_kwargs.get("tasks", ()))  # fail on a bad task name before loading anything
    configs = {m: QuantConfig.for_method(m, **quant_kwargs) for m in methods if m != FLOAT}
    quantize_fn = quantize_fn or _default_quantize
    float_model, tok, name, reference = load_float(model_name, loader, dtype)
    calib, calib_info = _calibration(tok, quant_kwargs.get("calib") or CalibSpec(), calib, bool(configs))
    if save_dir is not None:
        for m, cfg in configs.items():  # refuse a mismatched directory before hours of work
            _reusable(Path(save_dir) / m, cfg, calib_info)
    out = {
        "model": name,
        "methods": methods,
        "results": {},
        "calibration": calib_info,
        "quant_kwargs": {k: _plain(v) for k, v in quant_kwargs.items()},
    }
    for method in methods:
        t0 = time.perf_counter()
        model, shares, reused = _model_for(method, float_model, tok, configs, calib, calib_info, save_dir, reference,
                                           quantize_fn, device, progress)
        quant_s = time.perf_counter() - t0
        res = evaluate(model, tok, name=name, device=device, progress=progress, **eval_kwargs)
        res["method"] = method
        if method != FLOAT:
            from dpq.models.driver import concentrated  # noqa: PLC0415

            res["concentrated"] = concentrated(shares)
        res["settings"]["timings"]["quantize_s" if not reused else "load_s"] = round(quant_s, 1)
        if save_dir is not None and method != FLOAT:
            res["checkpoint"] = str(Path(save_dir) / method)
        out["results"][method] = res
        if on_result is not None:
            on_result(out)
        if model is not float_model:
            del model
            gc.collect()
    return out


def _calibration(tok, calib_spec: CalibSpec, calib, needed: bool):
    """(calibration ids [samples, seq_len] or None, their description with fingerprint or None)."""
    if not needed:
        return calib, None
    from dpq.io.data import calibration_batches, fingerprint  # noqa: PLC0415

    if calib is None:
        calib = calibration_batches(tok, calib_spec.source, calib_spec.samples, calib_spec.seq_len, calib_spec.seed,
                                    calib_spec.holdout)
        return calib, {**dataclasses.asdict(calib_spec), "fingerprint": fingerprint(calib)}
    if torch.is_tensor(calib):
        return calib, {"source": "given", "samples": int(calib.shape[0]), "seq_len": int(calib.shape[1]),
                       "fingerprint": fingerprint(calib)}
    return calib, None


def _model_for(method, float_model, tok, configs, calib, calib_info, save_dir, reference, quantize_fn, device,
               progress):
    """(model, {Linear: top-token share} or None, reused?) for one method: the float model, a checkpoint
    reused from save_dir, or a fresh quantization of a copy of the float model (saved to save_dir)."""
    if method == FLOAT:
        return float_model, None, False
    if save_dir is not None and (block := _reusable(Path(save_dir) / method, configs[method], calib_info)):
        from dpq.api import load  # noqa: PLC0415

        model, _ = load(str(Path(save_dir) / method), device=device)
        return model, block.get("top_token_share"), True
    from dpq.pipeline import QuantResult  # noqa: PLC0415

    model = copy.deepcopy(float_model)
    result = quantize_fn(model, tok, config=configs[method], calib=calib, device=device, progress=progress)
    shares = None
    if isinstance(result, QuantResult):
        model, shares = result.model, result.summary.top_token_shares()
    else:
        model = result
    if save_dir is not None:
        from dpq.api import save  # noqa: PLC0415

        save(result, str(Path(save_dir) / method), source_model=reference)
    return model, shares, False
