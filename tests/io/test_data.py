"""Calibration text files: unreadable ones are named (issue 24, case 16)."""

from __future__ import annotations

import pytest

from dpq.io.data import DataError, read_calibration_text


def test_binary_file_is_named(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=f"calibration file {p} is not UTF-8 text \\(byte 128 is 0x80\\)"):
        read_calibration_text(str(p))


def test_binary_jsonl_is_named(tmp_path):
    p = tmp_path / "calib.jsonl"
    p.write_bytes(b'{"text": "ok"}\n\xff\xfe')
    with pytest.raises(DataError, match=f"calibration file {p} is not UTF-8 text"):
        read_calibration_text(str(p))


def test_nul_bytes_are_refused(tmp_path):
    p = tmp_path / "zeros.txt"
    p.write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match="holds NUL bytes"):
        read_calibration_text(str(p))


def test_text_files_still_read(tmp_path):
    (tmp_path / "a.txt").write_text("héllo wörld", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n', encoding="utf-8")
    assert read_calibration_text(str(tmp_path / "a.txt")) == "héllo wörld"
    assert read_calibration_text(str(tmp_path / "b.jsonl")) == "one\n\ntwo"
