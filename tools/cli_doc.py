"""Rewrite the "Every flag" section of docs/cli.md from the `--help` output of every `dpq` command.

    python tools/cli_doc.py          # after changing a flag (tests/test_readme_and_docs.py checks the doc lists them all)
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
COMMANDS = ("quantize", "info", "generate", "eval", "compare", "export")
HEADING = "## Every flag\n"


def help_text(command: str) -> str:
    from dpq.cli import build_parser

    out = io.StringIO()
    with redirect_stdout(out):
        try:
            build_parser().parse_args([command, "--help"])
        except SystemExit:
            pass
    return out.getvalue().rstrip()


def main() -> None:
    os.environ["COLUMNS"] = "100"
    text = DOC.read_text(encoding="utf-8")
    head = text[: text.index(HEADING) + len(HEADING)]
    parts = []
    for c in COMMANDS:
        body = "\n".join("    " + line if line else "" for line in help_text(c).splitlines())
        parts.append(f"### `dpq {c}`\n\n{body}\n")
    DOC.write_text(head + "\n" + "\n".join(parts), encoding="utf-8")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
