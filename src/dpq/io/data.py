"""Local data sets: where they are, WikiText-2 text, calibration samples.

The data directory is `$DPQ_DATA_DIR`, else `../shared/data` next to the
repository (or the working directory). When it is absent the loaders fall back
to the Hugging Face hub (`datasets`), which needs network access.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[3]


class DataError(FileNotFoundError):
    """A data set is missing or unreadable; the message says where dpq looked and what to do."""


def data_dir(required: bool = False) -> Path | None:
    """The local data directory, or None when there is none (and not `required`)."""
    env = os.environ.get("DPQ_DATA_DIR")
    if env:
        p = Path(env)
        if not p.is_dir():
            raise DataError(f"DPQ_DATA_DIR={env} is not a directory: point it at the data folder (see README)")
        return p
    for cand in (REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "data"):
        if (cand / "wikitext2").is_dir():
            return cand
    if required:
        raise DataError(
            "no local data directory: set DPQ_DATA_DIR to a folder holding wikitext2/ and tasks/ "
            f"(looked in {REPO_ROOT.parent / 'shared' / 'data'} and {Path.cwd().parent / 'shared' / 'data'})"
        )
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"


def _hub_wikitext(split: str) -> list[str]:
    if _offline():
        raise DataError(
            f"WikiText-2 {split} is not on disk and HF_DATASETS_OFFLINE=1 forbids downloading it: "
            "set DPQ_DATA_DIR to the data folder"
        )
    try:
        import datasets  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on environment
        raise DataError("no local WikiText-2 and the `datasets` package is not installed: set DPQ_DATA_DIR") from e
    try:
        return list(datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"])
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise DataError(f"could not download WikiText-2 {split} ({e}); set DPQ_DATA_DIR to the data folder") from e


def wikitext2_test_rows() -> list[str]:
    """The 4,358 rows of the WikiText-2 raw test split ('' for blank rows)."""
    d = data_dir()
    if d is not None and (d / "wikitext2" / "test_rows.json").is_file():
        return json.loads((d / "wikitext2" / "test_rows.json").read_text(encoding="utf-8"))
    return _hub_wikitext("test")


def wikitext2_test_text() -> str:
    """The perplexity text: the test rows joined with "\\n\\n" (GPTQ protocol)."""
    return "\n\n".join(wikitext2_test_rows())


def wikitext2_valid_text() -> str:
    """WikiText-2 validation text, for calibration (never the test split)."""
    d = data_dir()
    if d is not None and (d / "wikitext2" / "valid.tokens.txt").is_file():
        return (d / "wikitext2" / "valid.tokens.txt").read_text(encoding="utf-8")
    return "\n\n".join(_hub_wikitext("validation"))


def _read_text(p: Path) -> str:
    """A calibration file's text; a DataError naming the file if it is not UTF-8 text (a binary file)."""
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"calibration file {p} is not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}): "
                        "give a .txt or .jsonl text file") from None
    if "\x00" in text:
        raise DataError(f"calibration file {p} holds NUL bytes (a binary file?): give a .txt or .jsonl text file")
    return text


def read_calibration_text(source: str) -> str:
    """Calibration text from "wikitext2", a .txt file, or a .jsonl file of {"text": ...} rows."""
    if source == "wikitext2":
        return wikitext2_valid_text()
    p = Path(source)
    if not p.is_file():
        raise DataError(f"calibration source {source!r}: use 'wikitext2', a .txt file or a .jsonl file")
    text = _read_text(p)
    if p.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{i}: not valid JSON ({e.msg})") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(f'{p}:{i}: each line must be an object with a "text" string')
            rows.append(obj["text"])
        text = "\n\n".join(rows)
    if not text.strip():
        raise DataError(f"calibration file {p} is empty: give it some text")
    return text


HOLDOUT_FRACTION = 0.2
"""Share of the calibration text's tokens, at its end, that `holdout=True` leaves for setting selection."""


def _text_ids(tokenizer, source: str) -> torch.Tensor:
    text = read_calibration_text(source)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]


def heldout_ids(tokenizer, source: str = "wikitext2") -> torch.Tensor:
    """The last HOLDOUT_FRACTION of the calibration text's tokens [N]: what `holdout=True` calibration never
    sees, for choosing settings (perplexity `wikitext2-heldout`) without the test split."""
    ids = _text_ids(tokenizer, source)
    return ids[int(ids.numel() * (1 - HOLDOUT_FRACTION)) :]


def calibration_batches(tokenizer, source: str, samples: int, seq_len: int, seed: int = 0,
                        holdout: bool = False) -> torch.Tensor:
    """Random windows of `seq_len` tokens from the calibration text: [samples, seq_len] int64.

    The text is tokenized once; window starts are drawn with `seed`. Too little
    text for one window raises an error naming how many tokens there are.
    holdout: draw only from the first 1 - HOLDOUT_FRACTION of the tokens (see `heldout_ids`).
    """
    ids = _text_ids(tokenizer, source)
    if holdout:
        ids = ids[: int(ids.numel() * (1 - HOLDOUT_FRACTION))]
    if ids.numel() <= seq_len:
        raise DataError(
            f"calibration text has {ids.numel()} tokens, fewer than one window of {seq_len}: "
            "lower --seq-len or give more text"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (samples,), generator=gen)
    batch = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False):
        batch[:, 0] = bos
    return batch


def fingerprint(t: torch.Tensor) -> str:
    """sha256 of a token tensor: identifies the exact calibration data in a checkpoint."""
    return hashlib.sha256(t.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()
