"""Calibration text from outside WikiText-2: Python source, and book text without evaluated examples.

    python benchmarks/calib_text.py --out-dir out/calib

writes
  python-stdlib.txt the running interpreter's top-level standard-library modules (`Lib/*.py`, sorted by
                    name) up to 2 MB: code, comments and docstrings, a domain no task or test window shares
  lambada-tail.txt  LAMBADA (OpenAI) passages 201..5153 (context + the target word), book text: the
                    first 200 passages, the ones `dpq eval --tasks lambada --limit 200` scores, are left out
  mix.txt           WikiText-2 validation text followed by lambada-tail.txt (windows are drawn uniformly
                    from the whole, about 60% of the tokens from the books)

Never calibrate on the examples you evaluate: this keeps every evaluated LAMBADA passage out, but the
remaining passages come from the same novels' distribution, so a LAMBADA gain after calibrating on them
is partly domain match; the other seven tasks share no text with these files.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path

from dpq.io.data import data_dir, wikitext2_valid_text

EVALUATED = 200
"""Examples per task that the zero-shot protocol scores (`--limit 200`)."""


CODE_BYTES = 2_000_000
"""Characters of Python source in python-stdlib.txt (about 0.5M tokens: far more than 128 x 2048)."""


def python_stdlib() -> str:
    """The interpreter's top-level standard-library modules, sorted by name, joined up to CODE_BYTES."""
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# file: {path.name}\n{text}")
        size += len(parts[-1])
        if size >= CODE_BYTES:
            break
    return "\n\n".join(parts)[:CODE_BYTES]


def lambada_tail() -> str:
    rows = (data_dir(required=True) / "tasks" / "lambada_openai.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(r) for r in rows if r.strip()][EVALUATED:]
    return "\n\n".join(d["context"] + " " + d["continuation"] for d in docs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="out/calib")
    a = ap.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "python-stdlib.txt").write_text(python_stdlib(), encoding="utf-8")
    books = lambada_tail()
    (out / "lambada-tail.txt").write_text(books, encoding="utf-8")
    (out / "mix.txt").write_text(wikitext2_valid_text() + "\n\n" + books, encoding="utf-8")
    for name in ("python-stdlib.txt", "lambada-tail.txt", "mix.txt"):
        print(f"wrote {out / name} ({len((out / name).read_text(encoding='utf-8').split())} words)")


if __name__ == "__main__":
    main()
