"""dpq.generate: an empty prompt is refused before anything is loaded (issue 24, case 16)."""

from __future__ import annotations

import pytest

from dpq.generate import generate


def test_empty_prompt_is_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="--prompt is empty"):
        generate(str(tmp_path / "does-not-exist"), "")


def test_prompt_is_continued(tiny_llama_dir):
    out = generate(str(tiny_llama_dir), "Hello", max_new_tokens=2)
    assert out.startswith("Hello")
