"""Bad input to the command line: exit code 2, one line on stderr naming the problem, before any work.

Issue 24, cases 8-10, 12, 13, 16 and 17 as a user meets them (`dpq.cli.main`, in-process, tiny random Llama).
"""

from __future__ import annotations

import pytest

import dpq.api
import dpq.io.data
import dpq.pipeline
import dpq.eval.run
from dpq.cli import main


def _refused(argv, capsys, *needles) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]  # progress bars may precede it
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err  # one line, the last
    for n in needles:
        assert n in errors[0], (n, err)
    return errors[0]


QUICK = ["--calib-samples", "2", "--calib-seq-len", "32", "--group-size", "32"]


# --- case 10: F must be an E4M3 value, one rule everywhere --------------------------------------

def test_quantize_fp8_max_100_is_refused(tiny_llama_dir, tmp_path, capsys, no_calibration):
    _refused(["quantize", tiny_llama_dir, "--out", tmp_path / "q", "--fp8-max", "100", *QUICK], capsys,
             "fp8_max=100 is not an FP8 E4M3 value", "96 and 104")
    assert not (tmp_path / "q").exists()


def test_compare_fp8_max_100_is_refused(tiny_llama_dir, capsys):
    _refused(["compare", tiny_llama_dir, "--methods", "bf16,dpq", "--fp8-max", "100"], capsys,
             "fp8_max=100 is not an FP8 E4M3 value")


# --- case 9: the vllm-w4afp8 rules come from QuantConfig ----------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--group-size", "64"], "needs group size 128, got 64 (use --group-size 128)"),
    (["--fp8-max", "240"], "needs F = 448, got fp8_max=240 (use --fp8-max 448)"),
    (["--method", "rtn-w4a16"], "needs FP8 activations"),
])
def test_vllm_target_rules_in_the_cli(tiny_llama_dir, tmp_path, capsys, no_calibration, args, message):
    _refused(["quantize", tiny_llama_dir, "--out", tmp_path / "q", "--target", "vllm-w4afp8", *args], capsys,
             "target vllm-w4afp8 runs vLLM's W4AFP8 kernel", message)


# --- case 12: --ignore patterns that match nothing, or everything ------------------------------

def test_ignore_typo_names_the_closest_linears(tiny_llama_dir, tmp_path, capsys, no_calibration):
    _refused(["quantize", tiny_llama_dir, "--out", tmp_path / "q", *QUICK, "--ignore", "down_prj", "o_proj"], capsys,
             "ignore pattern 'down_prj' (closest: down_proj", "matches none of the 14 Linears dpq quantizes")


def test_ignore_everything_is_refused_before_calibration(tiny_llama_dir, tmp_path, capsys, no_calibration):
    err = _refused(["quantize", tiny_llama_dir, "--out", tmp_path / "q", *QUICK, "--ignore", "*"], capsys,
                   "leave all 14 quantizable Linears in high precision: nothing would be quantized")
    assert "run dpq.quantize first" not in err  # the old, wrong hint
    assert not (tmp_path / "q").exists()


# --- case 13: calibration longer than the model's context ---------------------------------------

def test_quantize_seq_len_beyond_context(tiny_llama_dir, tmp_path, capsys, no_calibration):
    _refused(["quantize", tiny_llama_dir, "--out", tmp_path / "q", "--calib-samples", "2", "--calib-seq-len", "1024"],
             capsys, "seq_len=1024 is longer than the model's context (512 tokens", "--calib-seq-len 512")


# --- case 16 ---------------------------------------------------------------------------------------

def test_generate_empty_prompt(tmp_path, capsys):
    # the path does not exist: the prompt is refused before anything is loaded
    _refused(["generate", tmp_path / "nothing-here", "--prompt", ""], capsys, "--prompt is empty")


def test_eval_json_under_a_file_is_refused_before_evaluating(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dpq.eval.run, "evaluate_path", lambda *a, **k: pytest.fail("evaluated first"))
    (tmp_path / "afile").write_text("x")
    _refused(["eval", tiny_llama_dir, "--json", tmp_path / "afile" / "sub" / "r.json"], capsys,
             f"{tmp_path / 'afile'} is a file, not a directory")
    _refused(["eval", tiny_llama_dir, "--json", tmp_path], capsys, "is a directory: give a file name")


def test_compare_outputs_under_a_file_are_refused(tiny_llama_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for flag in ("--json", "--markdown", "--plot"):
        _refused(["compare", tiny_llama_dir, "--methods", "bf16", flag, tmp_path / "afile" / "o"], capsys,
                 f"{flag} {tmp_path / 'afile' / 'o'}: {tmp_path / 'afile'} is a file")


@pytest.mark.parametrize("argv, message", [
    (["quantize", "M", "--out", "O", "--batch-size", "0"], "argument --batch-size: 0: must be a positive integer"),
    (["quantize", "M", "--out", "O", "--calib-samples", "0"], "argument --calib-samples: 0: must be a positive"),
    (["quantize", "M", "--out", "O", "--calib-seq-len", "-5"], "argument --calib-seq-len/--seq-len: -5: must be a positive integer"),
    (["quantize", "M", "--out", "O", "--calib-skip-first", "-1"], "argument --calib-skip-first: -1: must be an integer >= 0"),
    (["generate", "M", "--prompt", "x", "--max-new-tokens", "0"], "argument --max-new-tokens: 0: must be a positive"),
    (["eval", "M", "--batch-size", "0"], "argument --batch-size: 0: must be a positive integer"),
    (["eval", "M", "--max-windows", "0"], "argument --max-windows: 0: must be a positive integer"),
    (["eval", "M", "--seq-len", "1"], "argument --seq-len: 1: must be an integer >= 2"),
    (["eval", "M", "--limit", "0"], "argument --limit: 0: must be a positive number"),
    (["eval", "M", "--num-fewshot", "-1"], "argument --num-fewshot: -1: must be an integer >= 0"),
    (["compare", "M", "--calib-samples", "0"], "argument --calib-samples: 0: must be a positive integer"),
    (["compare", "M", "--batch-size", "0"], "argument --batch-size: 0: must be a positive integer"),
    (["--threads", "0", "info", "M"], "argument --threads: 0: must be a positive integer"),
    (["quantize", "M", "--out", "O", "--batch-size", "two"], "argument --batch-size: 'two' is not an integer"),
])
def test_non_positive_counts_are_refused(capsys, argv, message):
    _refused(argv, capsys, message)


def test_binary_calibration_file_is_named(tiny_llama_dir, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_bytes(bytes(range(256)) * 20)
    _refused(["quantize", tiny_llama_dir, "--out", tmp_path / "q", *QUICK, "--calib", calib], capsys,
             f"calibration file {calib} is not UTF-8 text")


def test_quantizing_a_checkpoint_again_is_refused(tiny_llama_dir, tmp_path, capsys):
    import torch

    import dpq
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    cfg = dpq.QuantConfig.for_method("rtn-w4a16", group_size=32)
    result = dpq.quantize(model, tok, cfg, calib=torch.zeros(1, 8, dtype=torch.long), progress=False)
    ck = dpq.save(result, tmp_path / "ck", source_model=str(tiny_llama_dir))
    _refused(["quantize", ck, "--out", tmp_path / "q", *QUICK], capsys,
             "is a dpq checkpoint, already quantized: give the float model it was quantized from",
             str(tiny_llama_dir))
    assert not (tmp_path / "q").exists()


# --- case 17: a local path that does not exist ----------------------------------------------------

@pytest.mark.parametrize("path", ["./no-such-model", "../no/such/model", "/no/such/model", "~/no-such-dpq-model",
                                  "models/no/such", "no-such-dir/"])
def test_missing_local_path_says_so(tmp_path, capsys, path):
    err = _refused(["quantize", path, "--out", tmp_path / "q"], capsys, f"{path}: path does not exist")
    assert "Repo id" not in err and "repo_type" not in err


def test_quantize_seq_len_is_a_deprecated_alias(capsys):
    """`--seq-len` still sets the calibration length of `dpq quantize`, with a warning naming --calib-seq-len."""
    from dpq.cli import build_parser

    a = build_parser().parse_args(["quantize", "M", "--out", "O", "--seq-len", "64"])
    assert a.seq_len == 64
    assert "--seq-len is deprecated here: use --calib-seq-len" in capsys.readouterr().err
    a = build_parser().parse_args(["quantize", "M", "--out", "O", "--calib-seq-len", "32"])
    assert a.seq_len == 32 and capsys.readouterr().err == ""


def test_compare_takes_target_ignore_and_dtype(monkeypatch, tmp_path):
    """`dpq compare` passes --target, --ignore and --dtype on (as `dpq quantize` takes them)."""
    import dpq.eval.compare as cmp
    from dpq.cli import main

    seen = {}

    def fake_compare(model, methods, quant_kwargs, eval_kwargs, **kw):
        seen.update(quant_kwargs=quant_kwargs, **kw)
        return {"model": "m", "methods": methods, "results": {}, "calibration": None, "quant_kwargs": {}}

    monkeypatch.setattr(cmp, "compare", fake_compare)
    monkeypatch.setattr("dpq.eval.report.to_markdown", lambda results: "")
    assert main(["compare", "M", "--methods", "dpq-gar", "--target", "vllm-w4afp8", "--ignore", "down_proj",
                 "--dtype", "bfloat16", "--ppl", "none"]) == 0
    q = seen["quant_kwargs"]
    assert q["target"] == "vllm-w4afp8" and q["ignore"] == ("down_proj",) and seen["dtype"] == "bfloat16"
    from dpq.config import QuantConfig

    assert QuantConfig.for_method("dpq-gar", **q).weight.symmetric  # the vLLM target implies symmetric
