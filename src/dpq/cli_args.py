"""The argument types, shared option groups and output helpers of the `dpq` command line (`dpq.cli`)."""

from __future__ import annotations

import argparse
import os
import sys


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `dpq quantize: error: argument --batch-size: 0: ... (see dpq quantize --help)`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(minimum: int):
    """argparse type: an integer >= minimum (1: a positive count, 0: a non-negative one)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"{v}: must be {kind}")
        return v

    return parse


def _positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number")
    return v


POSITIVE, NON_NEGATIVE = _count(1), _count(0)


def _check_output_file(flag: str, path: str | None) -> None:
    """Refuse, before any work, an output file that cannot be created: a directory, or under a file."""
    if not path:
        return
    from pathlib import Path  # noqa: PLC0415

    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a directory: give a file name")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a directory: choose another path")
            if not os.access(parent, os.W_OK):
                raise ValueError(f"{flag} {path}: {parent} is not writable: choose another path")
            return


class _DeprecatedAlias(argparse._StoreAction):
    """Stores the value; warns when the option was spelled with its deprecated alias (the last option string)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == self.option_strings[-1] and len(self.option_strings) > 1:
            print(f"dpq: warning: {option_string} is deprecated here: use {self.option_strings[0]}", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


ON_OFF = {"on": True, "off": False}


def _solver_option_args(p) -> None:
    """Options beyond the paper; unset keeps the method's own (off for dpq, dpq-gar and the baselines)."""
    g = p.add_argument_group("solver options beyond the paper (default: the method's own)")
    g.add_argument("--group-search", choices=sorted(ON_OFF), default=None,
                   help="search each group's min/max shrink and zero point on the FP8 inference weight")
    g.add_argument("--deployed-hessian", choices=sorted(ON_OFF), default=None,
                   help="Hessian of the FP8-quantized inputs s_x * fp8(x / s_x) the deployed Linear sees")
    g.add_argument("--asym-alpha", type=float, default=None, metavar="A",
                   help="weight of GPTAQ's asymmetric correction toward the float model's outputs (0 = off)")
    g.add_argument("--smooth", choices=sorted(ON_OFF), default=None,
                   help="per-channel input scales folded into the preceding norm / Linear, chosen by search")
    g.add_argument("--token-clip", type=float, default=None, metavar="C",
                   help="cap each calibration token's weight in H at C x the median token energy (0 = off)")
    g.add_argument("--refine", type=int, default=None, metavar="STEPS", dest="refine_steps",
                   help="signed-gradient block refinement steps per decoder layer (0 = off)")


def _solver_options(a) -> dict:
    """The keyword arguments of QuantConfig.for_method for the options given on the command line."""
    on_off = lambda v: None if v is None else ON_OFF[v]  # noqa: E731
    return {"group_search": on_off(a.group_search), "deployed_hessian": on_off(a.deployed_hessian),
            "asym_alpha": a.asym_alpha, "smooth": on_off(a.smooth), "token_clip": a.token_clip,
            "refine_steps": a.refine_steps}


def _eval_options(p, default_max_windows=None) -> None:
    p.add_argument("--ppl", default="wikitext2", choices=["wikitext2", "wikitext2-heldout", "none"],
                   help="perplexity data set: WikiText-2 test, the held-out last 20%% of the validation tokens "
                        "(for choosing settings; see --calib-holdout), or none")
    p.add_argument("--seq-len", type=_count(2), default=2048, help="perplexity window in tokens")
    p.add_argument("--max-windows", type=POSITIVE, default=default_max_windows, help="use only the first N windows")
    p.add_argument("--tasks", default="", help="comma-separated: dpq's local tasks piqa,arc_easy,arc_challenge,boolq,"
                   "openbookqa,winogrande,lambada,hellaswag,mmlu (offline; all = these nine) and/or any "
                   "lm-eval task name (loaded as lm-eval loads it)")
    p.add_argument("--limit", type=_positive_number, default=None,
                   help="examples per task (lm-eval --limit; below 1: a fraction of each task)")
    p.add_argument("--num-fewshot", type=NON_NEGATIVE, default=0)
    p.add_argument("--batch-size", type=POSITIVE, default=1, help="lm-eval batch size")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="write the results as JSON")


def _eval_kwargs(a) -> dict:
    limit = a.limit
    if limit is not None and float(limit).is_integer():
        limit = int(limit)
    return {
        "ppl": None if a.ppl == "none" else a.ppl,
        "seq_len": a.seq_len,
        "max_windows": a.max_windows,
        "tasks": [t.strip() for t in a.tasks.split(",") if t.strip()],
        "limit": limit,
        "num_fewshot": a.num_fewshot,
        "batch_size": a.batch_size,
    }


def _write_json(path: str | None, obj, quiet: bool = False) -> None:
    """The --json output, through `dpq.io.jsonfile.write_json_atomic`; says where it went."""
    if path:
        from dpq.io.jsonfile import write_json_atomic  # noqa: PLC0415

        write_json_atomic(path, obj)
        if not quiet:
            print(f"wrote {path}")
