"""The Python blocks of docs/transformers-lm-eval-vllm.md run, on a tiny checkpoint in place of SmolLM2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import dpq

DOC = Path(__file__).resolve().parents[2] / "docs" / "transformers-lm-eval-vllm.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def _shell_heredocs() -> dict[str, str]:
    """{file name: content} of the `cat > my_tasks/NAME <<EOF` blocks (indented 4 in the doc)."""
    text = DOC.read_text(encoding="utf-8")
    out = {}
    for name, body in re.findall(r"cat > my_tasks/(\S+) <<'?EOF'?\n(.*?)\n    EOF", text, flags=re.S):
        out[name] = "\n".join(line.removeprefix("    ") for line in body.splitlines()) + "\n"
    return out


@pytest.fixture(scope="module")
def doc_dirs(tmp_path_factory, tiny_llama_dir):
    """out/smollm2-g64 (a tiny RTN W4A8 g32 checkpoint), its export, and my_tasks/ as the doc writes them."""
    from dpq.models.loading import load_float_model

    root = tmp_path_factory.mktemp("doc")
    model, tok, _ = load_float_model(str(tiny_llama_dir))
    cfg = dpq.QuantConfig.for_method("rtn-w4a8", group_size=32)
    result = dpq.quantize(model, tok, cfg, calib=torch.randint(0, 1000, (1, 16)), progress=False)
    ck = dpq.save(result, root / "ck")
    dpq.export(ck, root / "ck-ct")
    tasks = root / "my_tasks"
    tasks.mkdir()
    for name, body in _shell_heredocs().items():
        (tasks / name).write_text(body.replace("$PWD/my_tasks", str(tasks)))
    return root


def test_doc_task_files_are_valid(doc_dirs):
    rows = [json.loads(x) for x in (doc_dirs / "my_tasks" / "quiz.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(set(r) == {"question", "choices", "gold"} for r in rows)
    assert "task: my_quiz" in (doc_dirs / "my_tasks" / "my_quiz.yaml").read_text()


@pytest.mark.parametrize("i", range(3))
def test_doc_python_block_runs(doc_dirs, i, monkeypatch, capsys):
    blocks = _blocks("python")
    assert len(blocks) == 3
    code = blocks[i]
    code = code.replace("out/smollm2-g64-ct", str(doc_dirs / "ck-ct"))
    code = code.replace("out/smollm2-g64-hf", str(doc_dirs / "ck-hf"))
    code = code.replace("out/smollm2-g64", str(doc_dirs / "ck"))
    code = code.replace('include_path="my_tasks"', f'include_path="{doc_dirs / "my_tasks"}"')
    monkeypatch.chdir(doc_dirs)
    exec(compile(code, f"{DOC.name}[python {i}]", "exec"), {})
    printed = capsys.readouterr().out
    if i == 0:
        assert "W4A8Linear(" in printed and (doc_dirs / "ck-hf" / "config.json").is_file()
    if i == 2:
        assert "num_bits=8" in printed and "type='float'" in printed
