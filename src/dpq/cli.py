"""`dpq` command line: parse -> config -> one library call per command."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dpq.cli_args import (  # noqa: F401 - argument types and option groups
    _check_output_file,
    _count,
    _DeprecatedAlias,
    _eval_kwargs,
    _eval_options,
    NON_NEGATIVE,
    ON_OFF,
    _Parser,
    POSITIVE,
    _positive_number,
    _solver_option_args,
    _solver_options,
    _write_json,
)
from dpq.config import (
    ACT_SCALE_METHODS,
    DEFAULT_METHOD,
    GROUP_PARAM_SOURCES,
    METHODS,
    TARGETS,
    ActSpec,
    CalibSpec,
    ConfigError,
    QuantConfig,
)
from dpq.io.export import WEIGHT_FORMATS
from dpq.numerics.fp8 import E4M3FN_MAX

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a causal LM to W4A8 and write a checkpoint directory")
    p.add_argument("model", nargs="?", default=None,
                   help="local directory, hub name, .gguf file, smollm2-135m (default) or gemma3-270m")
    p.add_argument("--out", required=True,
                   help="checkpoint directory to write (must not exist; an interrupted run with the same --out resumes)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"quantization method (default {DEFAULT_METHOD}; dpq and dpq-gar are the paper's)")
    p.add_argument("--calib-seq-len", "--seq-len", dest="seq_len", type=POSITIVE, default=2048,
                   action=_DeprecatedAlias, help="tokens per calibration sample (--seq-len: deprecated spelling)")
    _quant_options(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=POSITIVE, default=8, help="calibration sequences per forward")
    p.add_argument("--seed", type=int, default=0, help="calibration seed (which windows of text calibrate)")
    p.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                   help="largest safetensors file of the checkpoint (5GB default; GB = 10^9 bytes, GiB = 2^30)")
    p.add_argument("--restart", action="store_true",
                   help="discard what an interrupted run with the same --out kept, instead of resuming it")
    p.add_argument("--offload-dir", default=None, metavar="DIR",
                   help="keep calibration activations in memory-mapped files under DIR (when they do not fit in RAM)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a dpq checkpoint (or empty)")
    p.set_defaults(func=cmd_quantize)


def _quant_options(p) -> None:
    """The quantization flags `quantize` and `compare` share (compare applies them to every method)."""
    p.add_argument("--calib", default="wikitext2", help="wikitext2, a .txt file or a .jsonl file of {\"text\": ...}")
    p.add_argument("--calib-samples", type=POSITIVE, default=128)
    p.add_argument("--calib-skip-first", type=NON_NEGATIVE, default=0, metavar="N",
                   help="leave the first N tokens of every calibration sequence out of the Hessians "
                        "(1 drops position 0, where attention sinks put massive activations)")
    p.add_argument("--calib-holdout", action="store_true",
                   help="draw calibration windows only from the first 80%% of the text's tokens, leaving the rest "
                        "for setting selection (dpq eval --ppl wikitext2-heldout)")
    p.add_argument("--group-size", type=int, default=128, help="input channels per group; -1 = per-channel")
    p.add_argument("--sym", action="store_true", help="symmetric INT4 (zero point 8)")
    p.add_argument("--fp8-max", type=float, default=E4M3FN_MAX,
                   help="FP8 range F, an E4M3 value: 448 (E4M3FN) or 240 (Gaudi 2)")
    p.add_argument("--act-scale", default="maxabs", choices=ACT_SCALE_METHODS)
    p.add_argument("--group-params", default="updated", choices=GROUP_PARAM_SOURCES,
                   help="DPQ group parameters from the error-updated weights (default) or frozen originals (reference)")
    p.add_argument("--ignore", nargs="*", default=[], metavar="PATTERN",
                   help="module names or glob patterns to leave in high precision (e.g. down_proj, 'model.layers.0.*')")
    p.add_argument("--target", default="paper", choices=TARGETS,
                   help="numerics to calibrate for: paper (asymmetric INT4, static FP8 activations) or "
                        "vllm-w4afp8 (vLLM's W4AFP8: symmetric INT4 g128, per-token FP8; implies --sym)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the float weights in memory and of the tensors the checkpoint keeps unquantized "
                        "(embeddings, norms, lm_head): auto (default) is the source's own (bf16 for most hub models, "
                        "float32 for dequantized GGUF weights); the solver always works in float32")
    _solver_option_args(p)


def _quant_kwargs(a, seq_len: int) -> dict:
    """QuantConfig.for_method's keyword arguments from `_quant_options`' flags (symmetric None: the target's own;
    solver options left unset keep the method's own)."""
    return dict(
        group_size=a.group_size, symmetric=True if a.sym else None, fp8_max=a.fp8_max, act=ActSpec(method=a.act_scale),
        calib=CalibSpec(a.calib, a.calib_samples, seq_len, a.seed, a.calib_skip_first, a.calib_holdout),
        group_params=a.group_params, target=a.target, ignore=tuple(a.ignore),
        **{k: v for k, v in _solver_options(a).items() if v is not None},
    )


def cmd_quantize(a) -> int:
    import dpq  # noqa: PLC0415
    from dpq.io.data import read_calibration_text  # noqa: PLC0415
    from dpq.io.shards import parse_size  # noqa: PLC0415
    from dpq.report import print_summary  # noqa: PLC0415

    config = QuantConfig.for_method(a.method, **_quant_kwargs(a, a.seq_len))
    parse_size(a.max_shard_size)  # a bad size fails before any work
    if a.calib != "wikitext2":
        read_calibration_text(a.calib)  # a missing or binary file is named before the model loads
    result = dpq.quantize_to_disk(a.model, a.out, config, dtype=a.dtype, device=a.device, batch_size=a.batch_size,
                                  max_shard_size=a.max_shard_size, overwrite=a.overwrite, restart=a.restart,
                                  offload_dir=a.offload_dir)
    print_summary(result.summary, a.model or "smollm2-135m")
    print(f"wrote {result.path}")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a dpq checkpoint (or a float model)")
    p.add_argument("path", help="checkpoint directory (or a float model: directory, .gguf, bundled name)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=POSITIVE, default=32)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_generate)


def cmd_generate(a) -> int:
    from dpq.generate import generate  # noqa: PLC0415

    print(generate(a.path, a.prompt, a.max_new_tokens, a.device))
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a dpq checkpoint as a compressed-tensors model (transformers, vLLM)")
    p.add_argument("path", help="dpq checkpoint directory")
    p.add_argument("--format", default="compressed-tensors", choices=["compressed-tensors"])
    p.add_argument("--out", required=True, help="directory to write (must not exist)")
    p.add_argument("--target", default=None, choices=TARGETS,
                   help="default: the target the checkpoint was calibrated for")
    p.add_argument("--weights", default=None, choices=WEIGHT_FORMATS,
                   help="fp8 (default for the paper target): dpq's exact FP8 inference weights; int4 (default for "
                        "vllm-w4afp8 and W4A16): packed INT4 codes, group scales, zero points, half the bytes, "
                        "without dpq's FP8 weight rounding in transformers")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)


def cmd_export(a) -> int:
    import dpq  # noqa: PLC0415

    out = dpq.export(a.path, a.out, format=a.format, target=a.target, overwrite=a.overwrite, weights=a.weights)
    weights = json.loads((out / "dpq_export.json").read_text()).get("weights")
    if weights == "fp8":
        print("weights: FP8 (1 byte per weight: dpq's exact inference weights); --weights int4 stores half the bytes, "
              "without dpq's FP8 weight rounding")
    print(f"wrote {out}")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="what a checkpoint holds, its settings, its size against BF16")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)


def cmd_info(a) -> int:
    import dpq  # noqa: PLC0415
    from dpq.report import print_info  # noqa: PLC0415

    info = dpq.info(a.path)
    if a.json:
        print(json.dumps(info, indent=2))
    else:
        print_info(info)
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="WikiText-2 perplexity and zero-shot tasks of a float model or a checkpoint")
    p.add_argument("model", nargs="?", default=None, help="dpq checkpoint directory or float model (default smollm2-135m)")
    _eval_options(p)
    p.add_argument("--include-path", default=None, metavar="DIR",
                   help="a folder of your own lm-eval task YAMLs; their task names go in --tasks")
    p.add_argument("--vs-float", action="store_true",
                   help="for a checkpoint: also evaluate the float model it was quantized from and show the change")
    p.set_defaults(func=cmd_eval)


def cmd_eval(a) -> int:
    from dpq.eval.report import to_markdown  # noqa: PLC0415
    from dpq.eval.run import evaluate_path, evaluate_vs_float  # noqa: PLC0415

    _check_output_file("--json", a.json_out)
    opts = dict(device=a.device, include_path=a.include_path, **_eval_kwargs(a))
    results = evaluate_vs_float(a.model, **opts) if a.vs_float else [evaluate_path(a.model, **opts)]
    print(to_markdown(results))
    _write_json(a.json_out, results if a.vs_float else results[0])
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="quantize with several methods on the same calibration data and evaluate each")
    p.add_argument("model", nargs="?", default=None, help="float model (default smollm2-135m)")
    p.add_argument("--methods", default="bf16,rtn-w4a16,gptq-w4a16,rtn-w4a8,naive-w4a8,dpq,dpq-gar,dpq-gar-plus",
                   help="comma-separated; bf16 is the float model")
    p.add_argument("--calib-seq-len", type=POSITIVE, default=2048, help="tokens per calibration sample")
    _quant_options(p)
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=0, help="calibration seed (which windows of text calibrate)")
    seed.add_argument("--seeds", default=None, metavar="S1,S2,...",
                      help="repeat the comparison with each calibration seed and report every method's mean and "
                           "spread (max - min); checkpoints go to SAVE_DIR/seed-<s>/<method>")
    _eval_options(p)
    p.add_argument("--markdown", default=None, metavar="FILE.md", help="write the table as markdown")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="plot perplexity and average accuracy per method")
    p.add_argument("--save-dir", default=None, metavar="DIR",
                   help="also write each quantized model to DIR/<method>; a rerun with the same settings and "
                        "calibration loads them instead of quantizing again")
    p.set_defaults(func=cmd_compare)


def cmd_compare(a) -> int:
    from dpq.eval.compare import compare  # noqa: PLC0415
    from dpq.eval.report import plot, to_markdown  # noqa: PLC0415

    for flag, path in (("--json", a.json_out), ("--markdown", a.markdown), ("--plot", a.plot)):
        _check_output_file(flag, path)
    quant_kwargs = _quant_kwargs(a, a.calib_seq_len)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if a.seeds is not None:
        return _compare_seeds(a, methods, quant_kwargs)

    results = compare(a.model, methods, quant_kwargs, _eval_kwargs(a), device=a.device, save_dir=a.save_dir,
                      on_result=_partial_writer(a), dtype=a.dtype)
    results["complete"] = True
    table = to_markdown(results)
    print(table)
    _print_concentration_notes(results)
    _write_outputs(a, table, lambda path: plot(results, path), results)
    return 0


def _partial_writer(a):
    """on_result for compare: keep every finished method on disk (complete: false) while the rest run."""
    def partial(so_far: dict) -> None:
        if a.json_out:
            _write_json(a.json_out, {**so_far, "complete": False}, quiet=True)

    return partial


def _parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text}: give comma-separated integers, e.g. --seeds 0,1,2") from None


def _compare_seeds(a, methods: list[str], quant_kwargs: dict) -> int:
    from dpq.eval.seeds import compare_seeds, plot, to_markdown  # noqa: PLC0415

    summary = compare_seeds(a.model, methods, _parse_seeds(a.seeds), quant_kwargs, _eval_kwargs(a),
                            device=a.device, save_dir=a.save_dir, on_result=_partial_writer(a), dtype=a.dtype)
    table = to_markdown(summary)
    print(table)
    noted = set()
    for run in summary["runs"]:  # each flagged method once (the flags rarely depend on the seed)
        _print_concentration_notes({"results": {m: r for m, r in run["results"].items() if m not in noted}})
        noted |= {m for m, r in run["results"].items() if r.get("concentrated")}
    _write_outputs(a, table, lambda path: plot(summary, path), summary)
    return 0


def _write_outputs(a, table: str, draw, results: dict) -> None:
    """--markdown, --plot (draw(path) -> path) and --json of a comparison."""
    from pathlib import Path  # noqa: PLC0415

    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(table if table.endswith("\n") else table + "\n")
        print(f"wrote {a.markdown}")
    if a.plot:
        print(f"wrote {draw(a.plot)}")
    _write_json(a.json_out, results)


def _print_concentration_notes(results: dict) -> None:
    from dpq.report import concentration_note  # noqa: PLC0415

    for method, res in results["results"].items():
        if res.get("concentrated"):
            fp8 = QuantConfig.for_method(method).fp8.enabled
            print(f"note ({method}): " + concentration_note(method, res["concentrated"], fp8))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dpq", description="W4A8 quantization of LLMs with DPQ and GAR")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--threads", type=POSITIVE, default=None,
                        help="torch CPU threads (on a busy small CPU, 1 can be faster for evaluation)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_quantize, _add_generate, _add_info, _add_eval, _add_compare, _add_export):
        add(sub)
    return parser


def _version() -> str:
    from dpq import __version__  # noqa: PLC0415

    return f"dpq {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code: 0, or 2 for bad input (one line on stderr, no traceback)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help and --version exit 0; a usage error returns 2 like every other
        if e.code in (0, None):
            raise
        return int(e.code) if isinstance(e.code, int) else 2
    if args.threads is not None:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line
        print(f"dpq {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
