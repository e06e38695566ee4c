"""The README and docs stay short, correct and in step with the code: links resolve, every `dpq` command
shown parses with today's parser, docs/cli.md lists every flag, and the source stays in small pieces."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

import pytest

from dpq.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAX_README_LINES = 300
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines: move results and reference pages to docs/"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    missing = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


def _commands(text: str) -> list[str]:
    """Concrete `dpq ...` command lines of indented blocks (continuations joined; synopses with [ ] or ... skipped)."""
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s{4,}(?:\$ )?(dpq(?: --threads \d+)? (?:quantize|info|generate|eval|compare|export)(?:\s.*)?)$", line)
        if not m:
            continue
        cmd = m.group(1).split("  #")[0].strip()
        if any(tok in cmd for tok in ("[", "...", "|", "$", "<", "MODEL", "DIR", "TEXT")):
            continue
        out.append(cmd)
    return out


def _parse(cmd: str):
    parser = build_parser()
    try:
        return parser.parse_args(shlex.split(cmd)[1:])
    except SystemExit as e:
        raise AssertionError(f"`{cmd}` does not parse (exit {e.code})") from None


def test_readme_and_docs_commands_parse():
    cmds = [c for doc in DOCS for c in _commands(doc.read_text(encoding="utf-8"))]
    assert len(cmds) >= 10  # the quick start alone has four
    for cmd in cmds:
        a = _parse(cmd)
        assert callable(a.func), cmd


def test_quick_start_is_the_makefile_demo():
    """The README's four quick-start commands are what `make demo` runs."""
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    demo = [line.strip().replace("$(DPQ)", "dpq") for line in make.split("demo: setup\n")[1].split("\n\n")[0].splitlines()]
    readme = README.read_text(encoding="utf-8")
    for cmd in demo:
        assert f"    {cmd}\n" in readme, f"README's quick start lacks `{cmd}`"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_cli_doc_lists_every_flag():
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [f"dpq {name} {opt}" for name, p in _subparsers().items() for a in p._actions
               for opt in a.option_strings if opt.startswith("--") and opt != "--help" and opt not in doc]
    assert not missing, f"docs/cli.md lacks {missing}: regenerate its 'Every flag' section"


def _sources() -> list[Path]:
    return sorted((ROOT / "src").rglob("*.py"))


def test_source_files_are_small():
    big = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not big, f"files over {MAX_FILE_LINES} lines: {big}"


def test_functions_are_short():
    long = []
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(ROOT)}:{node.name} ({n})")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
