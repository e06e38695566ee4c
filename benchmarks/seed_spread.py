"""Calibration-seed spread from separate `dpq compare --seed N` runs.

    python benchmarks/seed_spread.py RESULT.json [RESULT.json ...] \
        --json benchmarks/results/seed_spread_X.json --markdown benchmarks/results/seed_spread_X.md [--plot X.png]

Each RESULT.json is the `--json` output of one `dpq compare` run; together they must be one
model with the same quantization and evaluation settings except the calibration seed (checked;
see `dpq.eval.seeds.summarize`). `dpq compare --seeds 0,1,2` does the same in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dpq.eval.seeds import plot, summarize, to_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="`dpq compare --json` files, one or more per seed")
    p.add_argument("--json", dest="json_out", default=None, help="write the summary as JSON")
    p.add_argument("--markdown", default=None, help="write the tables as markdown")
    p.add_argument("--plot", default=None, help="plot the per-method mean and min-max range")
    a = p.parse_args(argv)
    try:
        summary = summarize([json.loads(Path(f).read_text()) for f in a.results])
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as e:
        print(f"seed_spread: error: {e}", file=sys.stderr)
        return 2
    summary["files"] = [str(f) for f in a.results]
    table = to_markdown(summary)
    print(table)
    if a.json_out:
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {a.json_out}")
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(table)
        print(f"wrote {a.markdown}")
    if a.plot:
        print(f"wrote {plot(summary, a.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
