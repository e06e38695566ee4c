"""The command line, run in-process on a tiny random Llama."""

from __future__ import annotations

import json

import pytest

from dpq.cli import _print_concentration_notes, main


@pytest.fixture(scope="module")
def cli_ckpt(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "q"
    rc = main(["quantize", str(tiny_llama_dir), "--out", str(out), "--calib-samples", "4", "--calib-seq-len", "64",
               "--group-size", "64", "--method", "dpq-gar"])
    assert rc == 0
    return out


def test_quantize_writes_checkpoint_and_table(cli_ckpt, capsys):
    assert (cli_ckpt / "model.safetensors").is_file() and (cli_ckpt / "config.json").is_file()


def test_info_json(cli_ckpt, capsys):
    assert main(["info", str(cli_ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "dpq-gar" and info["ratio_to_bf16"] <= 0.3


def test_info_table(cli_ckpt, capsys):
    assert main(["info", str(cli_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "ratio to BF16" in out and "dpq-gar" in out


def test_generate(cli_ckpt, capsys):
    assert main(["generate", str(cli_ckpt), "--prompt", "Hello", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_existing_out_is_refused(cli_ckpt, tiny_llama_dir, capsys):
    assert main(["quantize", str(tiny_llama_dir), "--out", str(cli_ckpt)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fp8-max", "1000"], "fp8_max=1000"),
        (["--group-size", "0"], "group_size=0"),
        (["--calib-samples", "0"], "--calib-samples: 0: must be a positive integer"),
        (["--calib", "/does/not/exist.txt", "--calib-seq-len", "64"], "calibration source"),
        (["--calib-seq-len", "64", "--calib-skip-first", "64"], "skip_first=64"),
    ],
)
def test_bad_settings(tiny_llama_dir, tmp_path, capsys, args, message):
    rc = main(["quantize", str(tiny_llama_dir), "--out", str(tmp_path / "o"), *args])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_method_is_an_argparse_error(capsys):
    assert main(["quantize", "--out", "x", "--method", "awq"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'awq'" in err


def test_missing_model(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    assert main(["quantize", str(tmp_path / "m"), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_eval_vs_float_on_checkpoint(cli_ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", str(cli_ckpt), "--vs-float", "--seq-len", "128", "--max-windows", "2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "dpq-gar" in table and "float" in table
    float_res, q_res = json.loads(out.read_text())
    assert q_res["method"] == "dpq-gar" and q_res["windows"].startswith("2/")
    assert float_res["wikitext2_ppl"] > 1 and q_res["wikitext2_ppl"] > 1


def test_eval_seq_len_beyond_context(cli_ckpt, capsys):
    assert main(["eval", str(cli_ckpt), "--seq-len", "4096", "--max-windows", "1"]) == 2
    assert "4096" in capsys.readouterr().err


def test_compare_writes_table_json_plot_and_checkpoints(tiny_llama_dir, tmp_path, capsys):
    from dpq.io.checkpoint import is_checkpoint
    from dpq.io.data import data_dir

    if data_dir() is None:
        pytest.skip("no local data dir (set DPQ_DATA_DIR)")
    args = ["compare", str(tiny_llama_dir), "--methods", "bf16,rtn-w4a16,dpq-gar", "--calib-samples", "2",
            "--calib-seq-len", "64", "--group-size", "32", "--seq-len", "64", "--max-windows", "2",
            "--save-dir", str(tmp_path / "grid"), "--json", str(tmp_path / "c.json"),
            "--markdown", str(tmp_path / "c.md"), "--plot", str(tmp_path / "c.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| dpq-gar |" in out and "| rtn-w4a16 |" in out
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["complete"] is True and list(res["results"]) == ["bf16", "rtn-w4a16", "dpq-gar"]
    assert all(is_checkpoint(tmp_path / "grid" / m) for m in ("rtn-w4a16", "dpq-gar"))
    assert (tmp_path / "c.png").stat().st_size > 0 and "dpq-gar" in (tmp_path / "c.md").read_text()
    assert "concentrated" not in res["results"]["bf16"]
    assert all(isinstance(res["results"][m]["concentrated"], dict) for m in ("rtn-w4a16", "dpq-gar"))
    # the saved checkpoints are reused and give the same flagged Linears
    assert main(args[:-6] + ["--json", str(tmp_path / "c2.json")]) == 0
    res2 = json.loads((tmp_path / "c2.json").read_text())
    assert "load_s" in res2["results"]["dpq-gar"]["settings"]["timings"]
    assert res2["results"]["dpq-gar"]["concentrated"] == res["results"]["dpq-gar"]["concentrated"]
    capsys.readouterr()
    # a rerun with another group size must not mix its results with the saved ones
    assert main(args[:9] + ["16"] + args[10:]) == 2
    assert "other settings" in capsys.readouterr().err


def test_quantize_in_bfloat16_keeps_unquantized_tensors_in_bfloat16(tiny_llama_dir, tmp_path, capsys):
    import torch
    from safetensors import safe_open

    import dpq

    out = tmp_path / "bf16"
    assert main(["quantize", str(tiny_llama_dir), "--out", str(out), "--calib-samples", "2", "--calib-seq-len", "32",
                 "--group-size", "32", "--dtype", "bfloat16"]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.layers.0.mlp.down_proj.weight").dtype == torch.uint8
    model, tok = dpq.load(str(out))
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(tok("Hello world", return_tensors="pt").input_ids).logits
    assert torch.isfinite(logits).all()


def test_quantize_skip_first_is_stored_and_shown(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_dir), "--out", str(out), "--calib-samples", "2", "--calib-seq-len", "32",
                 "--group-size", "64", "--method", "naive-w4a8", "--calib-skip-first", "1"]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["calib"]["skip_first"] == 1
    assert main(["info", str(out)]) == 0
    assert "Hessians skip the first 1 tokens" in capsys.readouterr().out


def test_compare_prints_a_note_per_flagged_method(capsys):
    flagged = {"concentrated": {"model.layers.1.mlp.down_proj": 0.6}}
    _print_concentration_notes({"results": {"bf16": {}, "gptq-w4a16": flagged, "rtn-w4a8": flagged,
                                            "dpq": {"concentrated": {}}}})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["note (gptq-w4a16)", "note (rtn-w4a8)"]
    assert "FP8" not in lines[0] and "FP8 input scale" in lines[1]
    assert all("--ignore model.layers.1.mlp.down_proj" in line for line in lines)


def test_quantize_solver_options_are_stored_and_loadable(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "plus"
    rc = main(["quantize", str(tiny_llama_dir), "--out", str(out), "--calib-samples", "4", "--calib-seq-len", "64",
               "--group-size", "64", "--method", "dpq-gar-plus", "--asym-alpha", "0.25", "--smooth", "on",
               "--calib-holdout"])
    assert rc == 0
    info = json.loads((out / "config.json").read_text())["quantization_config"]
    solver = info["settings"]["solver"]
    assert info["method"] == "dpq-gar-plus"
    assert solver["group_search"] and solver["deployed_hessian"] and solver["smooth"]  # method's own + --smooth
    assert solver["asym_alpha"] == 0.25 and info["settings"]["calib"]["holdout"]
    import dpq  # noqa: PLC0415

    model, tok = dpq.load(str(out))  # the smoothed norms and the W4A8 Linears load as any checkpoint
    ids = tok("a test", return_tensors="pt").input_ids
    assert model(ids).logits.isfinite().all()


def test_solver_option_flags_are_validated(tiny_llama_dir, tmp_path, capsys):
    rc = main(["quantize", str(tiny_llama_dir), "--out", str(tmp_path / "x"), "--asym-alpha", "5"])
    assert rc == 2 and "asym_alpha=5.0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
