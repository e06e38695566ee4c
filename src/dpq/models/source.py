"""Where a float model's weights come from during a quantization run, one module at a time.

`open_source(MODEL, dtype)` returns either

- a `SafetensorsSource` for a model directory with safetensors weights (one file, or shards
  with `model.safetensors.index.json`): the model is built on the meta device and a module's
  weights are read from the shards (safetensors' lazy `safe_open`) only when the run needs it
  (`materialize`), and dropped again afterwards (`release`), so memory does not grow with the
  number of layers; or
- an `InMemorySource` for everything else (GGUF files, which are dequantized into memory on
  load; hub names; a model already in memory): materialize is a no-op and release frees a
  finished layer.

Both check that the source holds exactly the tensors the architecture expects: a missing or
unexpected weight is an error naming it, never a randomly initialised Linear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dpq.io.shards import INDEX_FILE, SINGLE_FILE, ShardError, shard_files
from dpq.models.loading import BUNDLED, ModelLoadError, ModelSource, load_tokenizer, resolve

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""`--dtype` choices: "auto" is the source's own dtype (float32 for dequantized GGUF weights)."""


class SourceError(ModelLoadError):
    """The source's weights do not match its architecture; the message names the tensor."""


class RenamedLayout(SourceError):
    """The checkpoint's tensor names are not the model's (transformers renames them on load): load in memory."""


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """torch dtype for a `--dtype` value; None means "auto"."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: kept name} for state-dict entries that are the same tensor (tied embeddings), meta or not."""
    seen: dict[int, str] = {}
    aliases = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            aliases[name] = seen[id(t)]
        else:
            seen[id(t)] = name
    return aliases


def _matches_any(name: str, patterns) -> bool:
    return any(re.search(p, name) for p in patterns or ())


def check_keys(model: nn.Module, found: set[str], where: str) -> None:
    """Every tensor the architecture expects is in `found` and nothing else is (tied aliases and the
    model's declared ignorable keys excepted); otherwise a SourceError naming the first offender."""
    expected = set(model.state_dict().keys())
    aliases = tied_aliases(model)
    missing = sorted(k for k in expected - found if k not in aliases
                     and not _matches_any(k, getattr(model, "_keys_to_ignore_on_load_missing", None)))
    unexpected = sorted(k for k in found - expected
                        if not _matches_any(k, getattr(model, "_keys_to_ignore_on_load_unexpected", None)))
    if missing:
        more = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
        raise SourceError(f"{where} has no tensor {missing[0]}{more}: the model files are incomplete; "
                          "re-download or re-save the model")
    if unexpected:
        more = f" ({len(unexpected)} unexpected in all)" if len(unexpected) > 1 else ""
        raise SourceError(f"{where} holds tensor {unexpected[0]} that the {type(model).__name__} architecture "
                          f"does not have{more}: is config.json the model's own?")


def meta_model(config, dtype: torch.dtype) -> nn.Module:
    """The CausalLM of `config` with its parameters on the meta device (buffers such as rotary tables real)."""
    from accelerate import init_empty_weights  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _is_meta(module: nn.Module) -> bool:
    return any(t.device.type == "meta" for t in module.state_dict().values())


@dataclass
class Source:
    """A float model, its tokenizer and where it came from; `model` may have meta-device parameters."""

    model: nn.Module
    tokenizer: object
    origin: ModelSource
    dtype: torch.dtype
    streaming: bool = False
    protected: tuple[str, ...] = field(default_factory=tuple)  # local paths an output must not touch

    @property
    def name(self) -> str:
        return self.origin.name

    @property
    def reference(self) -> str:
        return self.origin.reference

    def materialize(self, prefix: str) -> None:
        """Give the submodule at `prefix` (e.g. "model.layers.3") its weights; no-op when it has them."""

    def release(self, prefix: str) -> None:
        """Drop the submodule's tensors (it moves to the meta device)."""
        from dpq.models.specs import get_submodule  # noqa: PLC0415

        get_submodule(self.model, prefix).to("meta")

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors in the run's dtype (floating point) or their own (integer)."""
        state = self.model.state_dict()
        return {n: state[n] for n in names}

    def describe(self) -> dict:
        """What identifies the source's weights (for the resume fingerprint)."""
        return {"reference": self.reference, "dtype": str(self.dtype).removeprefix("torch.")}

    def generation_config(self):
        return getattr(self.model, "generation_config", None)


class SafetensorsSource(Source):
    """A model directory with safetensors weights, read lazily (see the module doc)."""

    def __init__(self, origin: ModelSource, dtype_name: str | torch.dtype | None) -> None:
        from safetensors import safe_open  # noqa: PLC0415
        from transformers import AutoConfig  # noqa: PLC0415

        d = Path(origin.path)
        self.dir = d
        self.where: dict[str, str] = {}
        self.src_dtypes: dict[str, torch.dtype] = {}
        self.file_sizes: dict[str, int] = {}
        for f in _weight_files(d):
            try:
                with safe_open(str(d / f), framework="pt") as sf:
                    for k in sf.keys():
                        self.where[k] = f
                        self.src_dtypes[k] = getattr(torch, _TORCH_DTYPE[sf.get_slice(k).get_dtype()])
            except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
                raise SourceError(f"{d / f} cannot be read ({e}): the file is truncated or corrupted") from e
            self.file_sizes[f] = (d / f).stat().st_size
        dtype = resolve_dtype(dtype_name) or self._own_dtype()
        config = AutoConfig.from_pretrained(d)
        model = meta_model(config, dtype)
        expected = set(model.state_dict())
        if len(expected & set(self.where)) < len(expected) / 2:
            raise RenamedLayout(f"{d}: the checkpoint names its tensors differently from the model")
        super().__init__(model, load_tokenizer(origin), origin, dtype, streaming=True, protected=(str(d.resolve()),))
        check_keys(model, set(self.where), str(d))

    def _own_dtype(self) -> torch.dtype:
        """The floating dtype that holds most of the source's tensors."""
        counts: dict[torch.dtype, int] = {}
        for dt in self.src_dtypes.values():
            if dt.is_floating_point:
                counts[dt] = counts.get(dt, 0) + 1
        return max(counts, key=counts.get) if counts else torch.float32

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open  # noqa: PLC0415

        aliases = tied_aliases(self.model)
        names = [aliases.get(n, n) if n not in self.where else n for n in names]
        out: dict[str, torch.Tensor] = {}
        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self.where[n], []).append(n)
        for f, keys in by_file.items():
            with safe_open(str(self.dir / f), framework="pt") as sf:  # closed again: no mapping outlives the read
                for k in keys:
                    t = sf.get_tensor(k)
                    out[k] = t.to(self.dtype) if t.is_floating_point() else t
        return out

    def materialize(self, prefix: str) -> None:
        from dpq.models.specs import get_submodule  # noqa: PLC0415

        module = get_submodule(self.model, prefix)
        if not _is_meta(module):
            return
        keys = list(module.state_dict().keys())
        tensors = self.read([f"{prefix}.{k}" for k in keys])
        aliases = tied_aliases(self.model)
        state = {k: tensors[aliases.get(f"{prefix}.{k}", f"{prefix}.{k}")] for k in keys}
        module.load_state_dict(state, strict=True, assign=True)

    def describe(self) -> dict:
        return {**super().describe(), "files": dict(sorted(self.file_sizes.items()))}

    def generation_config(self):
        """generation_config.json of the directory, else the defaults from_pretrained would derive."""
        from transformers import GenerationConfig  # noqa: PLC0415

        if (self.dir / "generation_config.json").is_file():
            return GenerationConfig.from_pretrained(self.dir)
        return GenerationConfig.from_model_config(self.model.config)


_TORCH_DTYPE = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
                "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                "BOOL": "bool"}


def _weight_files(d: Path) -> list[str]:
    try:
        files = shard_files(d)
    except ShardError as e:
        raise SourceError(str(e)) from e
    if (d / INDEX_FILE).is_file():
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise SourceError(f"{d / missing[0]} is listed in {INDEX_FILE} but missing: the download is incomplete")
    return files or [SINGLE_FILE]


def streamable(origin: ModelSource) -> bool:
    """A local directory (not GGUF) whose weights are safetensors."""
    if origin.gguf_file is not None or origin.name in BUNDLED:
        return False
    d = Path(origin.path)
    return d.is_dir() and ((d / INDEX_FILE).is_file() or (d / SINGLE_FILE).is_file())


def float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def in_memory(model: nn.Module, tokenizer, origin: ModelSource) -> Source:
    """A Source over a model already in memory (GGUF, hub, or the caller's own)."""
    protected = ()
    if origin.gguf_file is not None and origin.name not in BUNDLED:
        protected = (str((Path(origin.path) / origin.gguf_file).resolve()),)
    elif Path(origin.path).is_dir():
        protected = (str(Path(origin.path).resolve()),)
    return Source(model, tokenizer, origin, float_dtype(model), streaming=False, protected=protected)


def open_source(model: str | None, dtype: str | torch.dtype | None = "auto") -> Source:
    """The Source for a user's MODEL argument (bundled name, directory, .gguf file or hub name).

    dtype "auto": the source's own floating dtype (the safetensors' dtype; float32 for GGUF,
    whose weights are dequantized into memory).
    """
    origin = resolve(model)
    if streamable(origin):
        try:
            return SafetensorsSource(origin, dtype)
        except RenamedLayout:
            pass  # e.g. a multimodal checkpoint whose names transformers converts: load it in memory
    from dpq.models.loading import load_float_model  # noqa: PLC0415

    want = resolve_dtype(dtype) or (torch.float32 if origin.gguf_file is not None else "auto")
    m, tok, origin = load_float_model(model, dtype=want)
    return in_memory(m, tok, origin)
