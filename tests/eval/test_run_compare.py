import json

import pytest
import torch

from dpq.eval.compare import compare
from dpq.eval.perplexity import PerplexityError
from dpq.eval.run import evaluate
from dpq.io.checkpoint import is_checkpoint
from dpq.eval.tasks import TaskError
from dpq.io.data import data_dir

needs_wikitext = pytest.mark.skipif(data_dir() is None, reason="no local data dir (set DPQ_DATA_DIR)")


class CharTokenizer:
    """Characters to ids modulo the tiny vocabulary: enough for perplexity plumbing."""

    def __call__(self, text, return_tensors="pt"):
        class Out:
            input_ids = torch.tensor([[ord(c) % 64 for c in text]])

        return Out()


@needs_wikitext
def test_evaluate_schema_with_perplexity_only(tiny_llama):
    res = evaluate(tiny_llama, CharTokenizer(), name="tiny", seq_len=32, max_windows=2, progress=False)
    assert res["model"] == "tiny" and res["method"] == "float"
    assert res["wikitext2_ppl"] > 1 and res["windows"].startswith("2/")
    assert res["tasks"] == {} and res["average"] is None
    assert res["settings"]["seq_len"] == 32
    json.dumps(res)  # JSON-ready


def test_evaluate_refuses_bad_inputs_before_working(tiny_llama):
    with pytest.raises(TaskError, match="use one of"):
        evaluate(tiny_llama, CharTokenizer(), tasks=["nope"])
    with pytest.raises(PerplexityError, match="context"):
        evaluate(tiny_llama, CharTokenizer(), seq_len=4096)
    with pytest.raises(ValueError, match="ppl="):
        evaluate(tiny_llama, CharTokenizer(), ppl="c4")


def test_method_comes_from_quantization_config(tiny_llama):
    tiny_llama.config.quantization_config = {"method": "dpq-gar", "format_version": 1}
    res = evaluate(tiny_llama, CharTokenizer(), ppl=None)
    assert res["method"] == "dpq-gar" and res["wikitext2_ppl"] is None


def test_checkpoint_detection(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "dpq", "format_version": 1}}))
    assert is_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
    assert not is_checkpoint(tmp_path) and not is_checkpoint(tmp_path / "missing")


@needs_wikitext
def test_compare_quantizes_fresh_copies_with_the_same_calibration(make_llama):
    model = make_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.zeros(2, 16, dtype=torch.long)
    calls = []

    def fake_quantize(m, tok, config, calib=None, device="cpu", progress=True):
        calls.append((config.method, calib, m))
        for layer in m.model.layers:
            for lin in layer.modules():
                if isinstance(lin, torch.nn.Linear):
                    lin.weight.data = (lin.weight.data * 4).round() / 4  # a coarse grid
        return m

    out = compare(
        "tiny",
        methods=["bf16", "rtn-w4a8", "dpq"],
        eval_kwargs={"seq_len": 32, "max_windows": 2},
        calib=calib,
        quantize_fn=fake_quantize,
        loader=lambda name: (model, CharTokenizer(), name),
        progress=False,
    )
    assert list(out["results"]) == ["bf16", "rtn-w4a8", "dpq"]
    assert [c[0] for c in calls] == ["rtn-w4a8", "dpq"]
    assert all(c[1] is calib for c in calls) and all(c[2] is not model for c in calls)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # float model untouched
    ppl = {m: r["wikitext2_ppl"] for m, r in out["results"].items()}
    assert ppl["rtn-w4a8"] == ppl["dpq"] != ppl["bf16"]
    assert out["results"]["dpq"]["method"] == "dpq"


def test_compare_refuses_unknown_methods():
    with pytest.raises(ValueError, match="unknown method"):
        compare("tiny", methods=["bf16", "awq"], loader=lambda n: pytest.fail("loaded"))


@needs_wikitext
def test_compare_saves_checkpoints_and_reuses_them(tiny_llama_dir, tmp_path):
    from dpq.config import CalibSpec

    save = tmp_path / "grid"
    qk = {"group_size": 32, "calib": CalibSpec(samples=2, seq_len=32)}
    ek = {"seq_len": 32, "max_windows": 2}
    seen = []
    first = compare(str(tiny_llama_dir), ["bf16", "rtn-w4a8"], qk, ek, save_dir=str(save), progress=False,
                    on_result=lambda so_far: seen.append(list(so_far["results"])))
    assert seen == [["bf16"], ["bf16", "rtn-w4a8"]]
    assert is_checkpoint(save / "rtn-w4a8") and first["results"]["rtn-w4a8"]["checkpoint"] == str(save / "rtn-w4a8")

    def no_quantize(*a, **k):
        raise AssertionError("quantized again instead of loading the saved checkpoint")

    again = compare(str(tiny_llama_dir), ["rtn-w4a8"], qk, ek, save_dir=str(save), quantize_fn=no_quantize,
                    progress=False)
    assert again["results"]["rtn-w4a8"]["wikitext2_ppl"] == pytest.approx(first["results"]["rtn-w4a8"]["wikitext2_ppl"])
    assert "load_s" in again["results"]["rtn-w4a8"]["settings"]["timings"]

    with pytest.raises(ValueError, match="other settings"):
        compare(str(tiny_llama_dir), ["rtn-w4a8"], {**qk, "group_size": 16}, ek, save_dir=str(save), progress=False)
    with pytest.raises(ValueError, match="other tokens"):
        compare(str(tiny_llama_dir), ["rtn-w4a8"], qk, ek, save_dir=str(save), calib=torch.zeros(2, 32).long(),
                progress=False)
    (tmp_path / "junk" / "rtn-w4a8").mkdir(parents=True)
    with pytest.raises(ValueError, match="not a dpq checkpoint"):
        compare(str(tiny_llama_dir), ["rtn-w4a8"], qk, ek, save_dir=str(tmp_path / "junk"), progress=False)
