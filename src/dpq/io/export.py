"""Export a dpq checkpoint to compressed-tensors `pack-quantized` (transformers and vLLM load it).

    dpq export DIR --format compressed-tensors --out OUT

Two targets, chosen by how DIR was calibrated (`QuantConfig.target`):

paper        INT4 group weights (asymmetric: scale + zero point; symmetric when the
             checkpoint is), static per-tensor FP8 input activations. Plain
             `AutoModelForCausalLM.from_pretrained(OUT)` (transformers + compressed-tensors,
             default arguments) loads and runs it with the FP8 activation quantization on.
             vLLM has no scheme for INT4 weights with static FP8 activations.
vllm-w4afp8  INT4 symmetric g128 weights, dynamic per-token FP8 activations: the
             compressed-tensors `W4AFP8` scheme vLLM runs on SM90 with CUTLASS.

`weights="fp8"` (`dpq export --weights fp8`, paper target only) writes instead each quantized
Linear's exact inference weight fp8((q - z) * s_g) as FP8 E4M3 (`weight`, `float-quantized`
format) with the per-tensor `weight_scale` s_w: compressed-tensors then computes dpq's W4A8
numerics exactly (static FP8 activations, the same FP8 weight), at one byte per weight instead
of half a byte plus group scales.

compressed-tensors layout, read from compressed_tensors 0.20
(`compressors/pack_quantized/base.py`, `helpers.py`, `quantization/lifecycle/forward.py`):

    weight_packed      [N, ceil(K/8)] int32   8 codes per word, code j in bits 4j..4j+3; a
                                              stored nibble is the signed code + 8, i.e.
                                              exactly dpq's unsigned code q in [0, 15]
    weight_scale       [N, G]                 dequant: (q_signed - zp_signed) * scale
    weight_zero_point  [N, G] int32           asymmetric only: the zero points (signed zp + 8 =
                                              dpq's z) packed along N into the first ceil(N/8)
                                              rows, the other rows 0; config: zp_dtype int32
    weight_shape       [2] int64              (N, K)
    input_scale        [1]                    paper target: the static s_x

Why the zero points are padded (transformers 5.24, compressed-tensors 0.20.1): the default
load path (`CompressedTensorsHfQuantizer._process_model_before_weight_loading`) lays the
model out with `PackedQuantizationCompressor.compress` on the meta device, whose meta branch
leaves `weight_zero_point` unpacked, [N, G], in the scheme's zp_dtype (int8 by default); the
checkpoint's packed [ceil(N/8), G] tensor is then a size mismatch (RuntimeError). On the first
forward, `decompress` unpacks the loaded tensor as packed int32 ([:N] of its nibbles along N),
so an int32 [N, G] tensor holding the packed words first loads and decompresses exactly.
tests/io/test_export.py keeps a test that the standard packed layout still fails to load.

dpq's inference weight is s_w * fp8((q - z) * s_g); compressed-tensors'
dequant is (q - z) * scale with no FP8 rounding of the weight, so the exported
scale is s_g * s_w (exact: s_w is a power of two) and the weight differs by
that FP8 rounding; `export` measures it per Linear and writes it to
OUT/dpq_export.json. For the vLLM target the weight vLLM applies is
dpq.numerics.vllm_w4afp8.effective_weight, which the calibration simulated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

import dpq
from dpq.config import FP8_E4M3FN_MAX, TARGETS, QuantConfig
from dpq.io.checkpoint import MANIFEST, WEIGHTS, atomic_directory, read_quant_block, read_tensors, verify_files
from dpq.numerics import vllm_w4afp8
from dpq.numerics.fp8 import fp8_cast, to_fp8_storage
from dpq.numerics.int4 import dequantize, pack_int4_int32, unpack_int4

FORMATS = ("compressed-tensors",)
WEIGHT_FORMATS = ("int4", "fp8")
CT_FORMAT = "pack-quantized"
CT_FP8_FORMAT = "float-quantized"
EXPORT_INFO = "dpq_export.json"
SCALE_DTYPE = torch.float32
"""Exported weight_scale dtype. The values s_g (BF16) * s_w (a power of two) are BF16-exact, so vLLM's
BF16 `weight_scale` parameter receives them unchanged; float32 storage keeps compressed-tensors'
dequant, computed in the scale's dtype, exact ((q - z) * scale rounded to BF16 would not be)."""


class ExportError(ValueError):
    """The checkpoint cannot be written in the asked format/target; the message says why and what to do."""


def export(src: str | os.PathLike, out: str | os.PathLike, format: str = "compressed-tensors",
           target: str | None = None, overwrite: bool = False, weights: str | None = None) -> Path:
    """Write the dpq checkpoint `src` as a compressed-tensors model directory `out` (atomically).

    target: "paper" or "vllm-w4afp8"; None takes the checkpoint's own target.
    weights: "int4" (packed codes, group scales, zero points) or "fp8" (dpq's exact FP8 inference
    weight with s_w; paper target); None: `default_weights`. Returns the path written. Raises
    ExportError for what the format cannot express.
    """
    if format not in FORMATS:
        raise ExportError(f"format {format!r}: dpq exports to {', '.join(FORMATS)}")
    if weights is not None and weights not in WEIGHT_FORMATS:
        raise ExportError(f"weights {weights!r}: use one of {', '.join(WEIGHT_FORMATS)}")
    src, out = Path(src), Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists: choose another --out or pass overwrite")
    if out.resolve() == src.resolve():
        raise ExportError(f"--out {out} is the source checkpoint: write the export to another directory")
    block = read_quant_block(src)
    config: QuantConfig = block["config"]
    target = target or config.target
    weights = weights or default_weights(config, target)
    check_exportable(config, block["modules"], target, weights)
    verify_files(src)
    tensors = read_tensors(src, block["format_version"])
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    out_tensors, report = _convert_tensors(tensors, block, cfg, target, weights)
    cfg["quantization_config"] = quantization_config(config, _ignored_linears(cfg, block), target, weights)
    info = {
        "dpq_version": dpq.__version__, "source": str(src), "method": block["method"], "target": target,
        "weights": weights,
        "format": f"compressed-tensors/{CT_FP8_FORMAT if weights == 'fp8' else CT_FORMAT}",
        "weight_difference": _summarize(report),
        "per_linear": report,
    }
    with atomic_directory(out, overwrite) as tmp:
        save_file(out_tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str), encoding="utf-8")
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")
        for f in sorted(src.iterdir()):  # tokenizer, generation config, chat template ...
            weights_file = f.suffix == ".safetensors" or f.name == WEIGHTS + ".index.json"  # file or shards + index
            if f.is_file() and f.name not in ("config.json", MANIFEST) and not weights_file:
                shutil.copy2(f, tmp / f.name)
    return out


def default_weights(config: QuantConfig, target: str) -> str:
    """fp8 where dpq's inference weight is FP8-rounded (paper target with FP8): compressed-tensors' INT4
    dequant cannot apply that rounding, which DPQ's calibration compensated (SmolLM2 g64: +2.4% perplexity
    as INT4, -0.1% as FP8; docs/transformers-lm-eval-vllm.md). int4 for vllm-w4afp8 and W4A16 methods."""
    return "fp8" if target == "paper" and config.target == "paper" and config.fp8.enabled else "int4"


def check_exportable(config: QuantConfig, modules: dict[str, list[int]], target: str, weights: str = "int4") -> None:
    """Refuse, with the reason, what compressed-tensors (and, for vllm-w4afp8, vLLM) cannot express."""
    if target not in TARGETS:
        raise ExportError(f"target {target!r}: use one of {', '.join(TARGETS)}")
    if weights == "fp8" and (target != "paper" or config.target != "paper"):
        raise ExportError("--weights fp8 writes the paper target's FP8 inference weights; vLLM's W4AFP8 form "
                          "is INT4: export this checkpoint with --weights int4")
    if weights == "fp8" and not config.fp8.enabled:
        raise ExportError("this checkpoint has no FP8 numerics (a W4A16 method), so no FP8 inference weight: "
                          "export it with --weights int4")
    fp8_max = config.fp8.fp8_max
    if fp8_max is not None and fp8_max != FP8_E4M3FN_MAX:
        raise ExportError(
            f"the checkpoint was calibrated for the FP8 range F={fp8_max:g}; compressed-tensors FP8 is "
            "E4M3FN (F=448): re-quantize with --fp8-max 448")
    g = config.weight.group_size
    if target == "vllm-w4afp8":
        if config.target != "vllm-w4afp8":
            raise ExportError(
                "this checkpoint was calibrated for the paper's numerics (static per-tensor FP8 activations, "
                f"{'symmetric' if config.weight.symmetric else 'asymmetric'} INT4); vLLM's W4AFP8 form is "
                "symmetric INT4 with dynamic per-token FP8 activations: re-quantize with --target vllm-w4afp8")
        # QuantConfig already holds such a checkpoint to the target's rules (symmetric, g128, F = 448);
        # what is left is the model's shapes.
        bad = [f"{n} ({nk[0]}x{nk[1]})" for n, nk in sorted(modules.items())
               if nk[0] % vllm_w4afp8.GROUP_SIZE or nk[1] % vllm_w4afp8.GROUP_SIZE]
        if bad:
            raise ExportError(f"cannot export to vLLM's W4AFP8 form: {len(bad)} Linears have N or K not a "
                              f"multiple of 128, e.g. {bad[0]} (leave them out with --ignore)")
        return
    if config.target != "paper":
        raise ExportError(
            "this checkpoint was calibrated for vLLM's W4AFP8 numerics (dynamic per-token activations, no static "
            "input scales): export it with --target vllm-w4afp8")
    if g != -1 and weights == "int4":
        bad = [f"{n} (K={nk[1]})" for n, nk in sorted(modules.items()) if nk[1] % g]
        if bad:
            raise ExportError(
                f"compressed-tensors group quantization needs K divisible by the group size {g}, but "
                f"{len(bad)} Linears are not, e.g. {bad[0]}: re-quantize with a group size dividing every K "
                "(e.g. 64 or 32) or -1 (per-channel)")


def quantization_config(config: QuantConfig, ignore: list[str], target: str, weights_format: str = "int4") -> dict:
    """The compressed-tensors `quantization_config` block of config.json.

    Targets every Linear (as llm-compressor writes it) and ignores, by name, the Linears dpq kept in
    high precision (lm_head, --ignore'd ones); vLLM matches its fused q/k/v and gate/up against these.
    """
    from compressed_tensors import __version__ as ct_version  # noqa: PLC0415

    g = config.weight.group_size
    weights = {
        "num_bits": 4, "type": "int", "symmetric": bool(config.weight.symmetric),
        "strategy": "channel" if g == -1 else "group", "group_size": None if g == -1 else g,
        "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {},
    }
    if not config.weight.symmetric:
        weights["zp_dtype"] = "int32"  # the layout transformers builds must take the packed words
    fmt = CT_FORMAT
    if weights_format == "fp8":  # dpq's inference weight fp8((q - z) * s_g), per-tensor scale s_w
        fmt = CT_FP8_FORMAT
        weights = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor", "group_size": None,
                   "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {}}
    acts = None
    if config.fp8.enabled:
        dynamic = target == "vllm-w4afp8"
        acts = {
            "num_bits": 8, "type": "float", "symmetric": True, "strategy": "token" if dynamic else "tensor",
            "dynamic": dynamic, "group_size": None, "actorder": None,
            "observer": None if dynamic else "minmax", "observer_kwargs": {},
        }
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "version": ct_version,
        "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts,
                        "output_activations": None, "format": fmt},
        },
        "ignore": ignore,
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": None,
    }


def _ignored_linears(cfg: dict, block: dict) -> list[str]:
    """Linears that stay in high precision (lm_head and anything --ignore'd), by name."""
    from accelerate import init_empty_weights  # noqa: PLC0415
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    c = dict(cfg)
    c.pop("quantization_config", None)
    hf = AutoConfig.for_model(**c)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(hf)
    return sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in block["modules"])


def _convert_tensors(tensors: dict, block: dict, cfg: dict, target: str, weights: str = "int4") -> tuple[dict, dict]:
    """compressed-tensors state dict and, per Linear, the measured weight difference."""
    config: QuantConfig = block["config"]
    modules = block["modules"]
    float_dtype = next((t.dtype for k, t in tensors.items() if k.endswith("embed_tokens.weight")), torch.float32)
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.rpartition(".")[0] not in modules:
            out[key] = t
    for alias, src in block.get("tied", {}).items():  # tied weights: HF re-ties them when the config says so
        if not (cfg.get("tie_word_embeddings") and alias.endswith("lm_head.weight")):
            out[alias] = tensors[src].clone()
    report = {}
    for name, (n, k) in sorted(modules.items()):
        codes = unpack_int4(tensors[f"{name}.weight"], k)  # [N, K] uint8, 0..15
        s_g = tensors[f"{name}.scales"].float()  # [N, G], FP8 domain
        zero = tensors[f"{name}.zeros"]  # [N, G] uint8
        s_w = float(tensors[f"{name}.weight_scale"])
        scale = (s_g * s_w).to(SCALE_DTYPE)  # exact: s_w is a power of two
        if not torch.equal(scale.to(torch.bfloat16).float(), s_g * s_w):
            raise ExportError(f"{name}: the group scales times s_w={s_w:g} are not exact in bfloat16")
        if weights == "fp8":
            g = config.weight.group_size if config.weight.group_size != -1 else k
            w8 = to_fp8_storage(dequantize(codes, s_g, zero.float(), g), config.fp8.fp8_max)  # [N, K] E4M3
            out[f"{name}.weight"] = w8
            out[f"{name}.weight_scale"] = torch.tensor([s_w], dtype=torch.float32)
            report[name] = {"transformers_vs_dpq": _rel(w8.float() * s_w, _dpq_weight(codes, s_g, zero, s_w, config))}
        else:
            out[f"{name}.weight_packed"] = pack_int4_int32(codes)  # [N, ceil(K/8)]
            out[f"{name}.weight_scale"] = scale
            out[f"{name}.weight_shape"] = torch.tensor([n, k], dtype=torch.int64)
            report[name] = _weight_difference(codes, s_g, zero.float(), s_w, config, target)
        if not config.weight.symmetric and weights == "int4":
            out[f"{name}.weight_zero_point"] = padded_zero_points(zero)  # [N, G] int32
        if target == "paper" and config.fp8.enabled:
            out[f"{name}.input_scale"] = tensors[f"{name}.input_scale"].float().reshape(1).to(float_dtype)
        if f"{name}.bias" in tensors:
            out[f"{name}.bias"] = tensors[f"{name}.bias"].to(float_dtype)
    return out, report


def _dpq_weight(codes, s_g, zero, s_w: float, config: QuantConfig) -> torch.Tensor:
    """dpq's paper-target inference weight s_w * fp8((q - z) * s_g), float32 [N, K]."""
    g = config.weight.group_size if config.weight.group_size != -1 else codes.shape[1]
    return fp8_cast(dequantize(codes, s_g, zero.float(), g), config.fp8.fp8_max) * s_w


def padded_zero_points(zero: torch.Tensor) -> torch.Tensor:
    """dpq's zero points [N, G] uint8 (0..15) as the int32 [N, G] tensor transformers loads: packed
    along N into rows 0..ceil(N/8)-1 (compressed-tensors' layout), zero rows after (see the module doc)."""
    packed = pack_int4_int32(zero.t()).t()  # [ceil(N/8), G] int32
    out = torch.zeros(zero.shape, dtype=torch.int32)
    out[: packed.shape[0]] = packed
    return out


def _weight_difference(codes, s_g, zero, s_w, config: QuantConfig, target: str) -> dict:
    """Relative Frobenius difference between dpq's inference weight and what each consumer applies."""
    g = k_group = config.weight.group_size if config.weight.group_size != -1 else codes.shape[1]
    ct = dequantize(codes, s_g, zero, k_group) * s_w  # compressed-tensors: (q - z) * scale, no FP8
    if target == "paper":
        ref = fp8_cast(dequantize(codes, s_g, zero, g), config.fp8.fp8_max) * s_w if config.fp8.enabled else ct
        return {"transformers_vs_dpq": _rel(ct, ref)}
    ref = vllm_w4afp8.effective_weight(codes, s_g * s_w, g)  # what dpq calibrated for == what vLLM applies
    return {"transformers_vs_dpq": _rel(ct, ref)}  # vLLM applies `ref` by construction (not measured here)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp(min=1e-30))


def _summarize(report: dict) -> dict:
    keys = {k for r in report.values() for k in r}
    return {k: {"mean": sum(r[k] for r in report.values()) / len(report), "max": max(r[k] for r in report.values())}
            for k in sorted(keys)}
