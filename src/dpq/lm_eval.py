"""lm-evaluation-harness's command line with dpq's transformers quantizer registered first.

    python -m dpq.lm_eval --model hf --model_args pretrained=out/smollm2-dpq-gar --tasks piqa --device cpu

takes exactly lm-eval's arguments (`lm_eval --help`). Plain `lm_eval` runs in a process that never
imports dpq, so transformers does not know `quant_method: "dpq"` and stops on the packed weights'
shapes; this entry imports dpq, then runs lm-eval's own `cli_evaluate`.
"""

from __future__ import annotations

import sys

import dpq  # noqa: F401 - registers the "dpq" quantizer with transformers


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI (argv: lm-eval's arguments; default sys.argv[1:])."""
    from lm_eval.__main__ import cli_evaluate  # noqa: PLC0415 - the installed lm-evaluation-harness

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
