"""benchmarks/results is indexed and self-describing, and docs/results points at it correctly."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "results"
# folders that other developers add and index themselves (absent on some branches)
SELF_INDEXED: set[str] = set()  # every study folder is indexed in benchmarks/results/README.md
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _json_files() -> list[Path]:
    return sorted(RESULTS.rglob("*.json"))


def _tables_module():
    spec = importlib.util.spec_from_file_location("results_tables", RESULTS / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _blank(value) -> bool:
    return value is None or value == "" or value == [] or value == {}


@pytest.mark.parametrize("path", _json_files(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_json_has_meta_with_command_commit_machine(path):
    data = json.loads(path.read_text())
    meta = data.get("meta") if isinstance(data, dict) else None
    assert isinstance(meta, dict), f"{path}: no top-level 'meta' object"
    for key in ("command", "commit", "machine"):
        assert key in meta and not _blank(meta[key]), f"{path}: meta.{key} missing or empty"
    if "merged_from" in meta:  # one command and one commit per merged part, in the same order
        parts = meta["merged_from"]
        assert [p["commit"] for p in parts] == meta["commit"], path
        assert [p["command"] for p in parts] == meta["command"], path


def test_every_result_file_is_named_in_the_index():
    index = (RESULTS / "README.md").read_text()
    missing = []
    for path in sorted(RESULTS.rglob("*")):
        rel = path.relative_to(RESULTS)
        if path.is_dir() or rel.parts[0] in SELF_INDEXED or rel == Path("README.md") or "__pycache__" in rel.parts:
            continue
        if rel.as_posix() not in index:
            missing.append(rel.as_posix())
    assert not missing, f"not named in benchmarks/results/README.md: {missing}"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")) + [RESULTS / "README.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # http(s), mailto, in-page anchors
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_docs_tables_are_generated_from_the_json():
    tables = _tables_module()
    pages = sorted(DOCS.glob("*.md"))
    blocks = [m for p in pages for m in tables.BLOCK.finditer(p.read_text())]
    assert blocks, "no generated tables found in docs/results"
    for page in pages:
        text = page.read_text()
        assert tables.render(text) == text, (
            f"{page.relative_to(ROOT)}: a table differs from its JSON; "
            "run python benchmarks/results/tables.py --update docs/results/*.md")
