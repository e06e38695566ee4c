"""One evaluation of a model: WikiText-2 perplexity plus zero-shot tasks, as a JSON-ready dict.

Schema of the result:
    model           name or path
    method          quantization_config["method"], else "bf16" / "float" for a float model
    wikitext2_ppl   float or None (ppl=None)
    windows         "used/total" perplexity windows, or None
    tasks           {name: {acc, acc_norm (where lm-eval defines it), perplexity (lambada), n, note}}
    average         mean of `acc` over the tasks other than MMLU (MMLU is reported on its own,
                    as in the paper's tables); None without such tasks
    settings        seq_len, max_windows, limit, num_fewshot, batch_size, device, average rule
"""

from __future__ import annotations

import time

import torch

from dpq.eval.perplexity import check_seq_len, wikitext2_perplexity
from dpq.eval.tasks import resolve_tasks, run_tasks

AVERAGE_RULE = "mean of acc over the tasks other than mmlu"
PPL_DATASETS = ("wikitext2", "wikitext2-heldout")
"""wikitext2: the test split (GPTQ protocol); wikitext2-heldout: the last 20% of the validation tokens, which
calibration with `CalibSpec(holdout=True)` never sees (for choosing settings)."""


def model_method(model) -> str:
    """The quantization method recorded in the model's config, or "bf16"/"float" for a float model."""
    qc = getattr(model.config, "quantization_config", None)
    if qc is not None and not isinstance(qc, dict):
        qc = qc.to_dict() if hasattr(qc, "to_dict") else vars(qc)
    if qc and qc.get("method"):
        return str(qc["method"])
    dtype = getattr(model, "dtype", None)
    return "bf16" if dtype == torch.bfloat16 else "float"


def task_average(tasks: dict[str, dict]) -> float | None:
    """The `average` field: mean acc over the tasks other than MMLU."""
    accs = [t["acc"] for name, t in tasks.items() if name != "mmlu" and t.get("acc") is not None]
    return sum(accs) / len(accs) if accs else None


def evaluate(
    model,
    tokenizer,
    *,
    name: str | None = None,
    ppl: str | None = "wikitext2",
    seq_len: int = 2048,
    max_windows: int | None = None,
    tasks=(),
    limit: int | float | None = None,
    num_fewshot: int = 0,
    batch_size: int | str = 1,
    device: str = "cpu",
    progress: bool = True,
    include_path: str | None = None,
) -> dict:
    """Perplexity and task accuracies of an in-memory causal LM (moved to `device`); see the module doc.

    tasks: dpq's local task names and/or any lm-eval task name; include_path: a folder of the user's
    lm-eval task YAMLs (dpq.eval.harness).
    """
    specs = resolve_tasks(tasks, include_path)  # fail on a bad name before minutes of perplexity
    if ppl is not None and ppl not in PPL_DATASETS:
        raise ValueError(f"ppl={ppl!r}: use one of {', '.join(PPL_DATASETS)} or None to skip perplexity")
    if ppl is not None:
        check_seq_len(model, seq_len)
    model = model.to(device)
    model.eval()
    timings = {}
    result = {
        "model": name or getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "method": model_method(model),
        "wikitext2_ppl": None,
        "windows": None,
        "tasks": {},
        "average": None,
    }
    if ppl is not None:
        t0 = time.perf_counter()
        if ppl == "wikitext2":
            p = wikitext2_perplexity(model, tokenizer, seq_len=seq_len, max_windows=max_windows, progress=progress)
        else:
            from dpq.eval.perplexity import perplexity_of_ids  # noqa: PLC0415
            from dpq.io.data import heldout_ids  # noqa: PLC0415

            p = perplexity_of_ids(model, heldout_ids(tokenizer), seq_len, max_windows=max_windows, progress=progress)
        timings["ppl_s"] = round(time.perf_counter() - t0, 1)
        result["wikitext2_ppl"] = p.ppl
        result["windows"] = f"{p.windows_used}/{p.windows_total}"
    if specs:
        t0 = time.perf_counter()
        result["tasks"] = run_tasks(
            model, tokenizer, [s.name for s in specs], limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
            include_path=include_path,
        )
        timings["tasks_s"] = round(time.perf_counter() - t0, 1)
        result["average"] = task_average(result["tasks"])
    result["settings"] = {
        "ppl": ppl,
        "seq_len": seq_len,
        "max_windows": max_windows,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "include_path": include_path,
        "device": device,
        "average": AVERAGE_RULE,
        "timings": timings,
    }
    return result


def evaluate_path(model_or_dir: str | None = None, **opts) -> dict:
    """`evaluate` on a model named like the CLI's MODEL (bundled name, directory, .gguf, hub) or a dpq checkpoint."""
    if opts.get("ppl", "wikitext2") is None and not opts.get("tasks"):
        raise ValueError("nothing to evaluate: give ppl='wikitext2' and/or some tasks")
    resolve_tasks(opts.get("tasks", ()), opts.get("include_path"))  # a bad task name fails before loading the model
    from dpq.api import load_any  # noqa: PLC0415

    model, tok, name = load_any(model_or_dir, device=opts.get("device", "cpu"))
    opts.setdefault("name", name)
    return evaluate(model, tok, **opts)


def float_source(checkpoint: str) -> str:
    """The float model a dpq checkpoint records as its source (`dpq eval --vs-float`); ValueError when it
    records none, or records itself (the float model was overwritten by the checkpoint)."""
    import os  # noqa: PLC0415

    from dpq.io.checkpoint import read_quant_block  # noqa: PLC0415

    source = read_quant_block(checkpoint).get("source_model") if checkpoint else None
    if not source:
        raise ValueError("--vs-float needs a dpq checkpoint that records its source model (dpq quantize writes it)")
    if os.path.exists(source) and os.path.realpath(source) == os.path.realpath(checkpoint):
        raise ValueError(f"--vs-float: the checkpoint {checkpoint} records itself as its source model (the float "
                         "model was overwritten): evaluate the float model separately")
    return source


def evaluate_vs_float(checkpoint: str, **opts) -> list[dict]:
    """[float model's results, checkpoint's results] on the same data (`evaluate_path` options)."""
    source = float_source(checkpoint)
    return [evaluate_path(source, **opts), evaluate_path(checkpoint, **opts)]
