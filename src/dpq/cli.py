"""`dpq` command line: parse -> config -> one library call per command."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dpq.config import METHODS, ActSpec, CalibSpec, ConfigError, QuantConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a causal LM to W4A8 and write a checkpoint directory")
    p.add_argument("model", nargs="?", default=None,
                   help="local directory, hub name, .gguf file, smollm2-135m (default) or gemma3-270m")
    p.add_argument("--out", required=True, help="checkpoint directory to write (must not exist)")
    p.add_argument("--method", default="dpq-gar", choices=METHODS)
    p.add_argument("--calib", default="wikitext2", help="wikitext2, a .txt file or a .jsonl file of {\"text\": ...}")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--group-size", type=int, default=128, help="input channels per group; -1 = per-channel")
    p.add_argument("--sym", action="store_true", help="symmetric INT4 (zero point 8)")
    p.add_argument("--fp8-max", type=float, default=448.0, help="FP8 range F: 448 (E4M3FN) or 240 (Gaudi 2)")
    p.add_argument("--act-scale", default="maxabs", choices=["maxabs", "percentile", "mse"])
    p.add_argument("--group-params", default="updated", choices=["updated", "frozen"],
                   help="DPQ group parameters from the error-updated weights (default) or frozen originals (reference)")
    p.add_argument("--ignore", nargs="*", default=[], metavar="PATTERN",
                   help="module names or glob patterns to leave in high precision (e.g. down_proj, 'model.layers.0.*')")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=8, help="calibration sequences per forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(a) -> int:
    import dpq  # noqa: PLC0415
    from dpq.models.loading import load_float_model  # noqa: PLC0415
    from dpq.report import print_summary  # noqa: PLC0415

    if os.path.exists(a.out) and not a.overwrite:
        raise ConfigError(f"--out {a.out} already exists: choose another directory or pass --overwrite")
    config = QuantConfig.for_method(
        a.method, group_size=a.group_size, symmetric=a.sym, fp8_max=a.fp8_max,
        act=ActSpec(method=a.act_scale), calib=CalibSpec(a.calib, a.calib_samples, a.seq_len, a.seed),
        ignore=tuple(a.ignore), group_params=a.group_params,
    )
    model, tok, src = load_float_model(a.model)
    summary = dpq.quantize(model, tok, config, device=a.device, batch_size=a.batch_size)
    out = dpq.save(model, tok, a.out, config, overwrite=a.overwrite)
    print_summary(summary, src.name)
    print(f"wrote {out}")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a dpq checkpoint (or a float model)")
    p.add_argument("path", help="checkpoint directory (or a float model: directory, .gguf, bundled name)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.set_defaults(func=cmd_generate)


def cmd_generate(a) -> int:
    from dpq.generate import generate  # noqa: PLC0415

    print(generate(a.path, a.prompt, a.max_new_tokens, a.device))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpq", description="W4A8 quantization of LLMs with DPQ and GAR")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_quantize, _add_generate, _add_info):
        add(sub)
    return parser


def _version() -> str:
    from dpq import __version__  # noqa: PLC0415

    return f"dpq {__version__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"dpq {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
