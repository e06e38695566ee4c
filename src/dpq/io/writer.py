"""Writing a dpq checkpoint as the run goes: the plan of every tensor, then the tensors, then the small files.

The plan follows from the float model's config and the quantization settings alone
(`checkpoint_units`, built on a meta-device model), so the in-memory path (`dpq.save` of a
quantized model) and the streaming path (each layer written as soon as it is quantized) write
the same files byte for byte:

    unit 0      every tensor outside the decoder layers (embeddings, final norm, lm_head), in
                state-dict order, tied aliases left out (recorded in the quantization block)
    unit i + 1  decoder layer i's tensors as the quantized layer's state dict orders them
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from dpq.config import FORMAT_VERSION, QuantConfig
from dpq.io.shards import ShardedWriter, ShardPlan, TensorEntry, _sha256, plan_shards
from dpq.models.source import meta_model, tied_aliases
from dpq.models.specs import ArchSpec, get_submodule, is_ignored, set_submodule, spec_for
from dpq.nn.linear import W4A8Linear

MANIFEST = "dpq_manifest.json"
TOKENIZER_PROBE = "The capital of France is Paris. Robert Boulter is an English actor, born 1,234 years ago."


class WriteError(ValueError):
    """The checkpoint cannot be written as planned; the message names the tensor or file."""


def _quantized_skeleton(layer, spec: ArchSpec, prefix: str, config: QuantConfig):
    """A meta copy of a float decoder layer with W4A8 modules where the run will put them."""
    q = copy.deepcopy(layer).to("meta")
    for name in spec.linears:
        if is_ignored(f"{prefix}.{name}", config.ignore):
            continue
        lin = get_submodule(q, name)
        with torch.device("meta"):
            m = W4A8Linear(lin.in_features, lin.out_features, lin.bias is not None, config.weight.group_size,
                           config.fp8.fp8_max, config.weight.scale_dtype, config.target)
        set_submodule(q, name, m)
    return q


def checkpoint_units(model, config: QuantConfig) -> tuple[list[list[TensorEntry]], dict[str, str], dict]:
    """(units, tied aliases, quantized modules {name: [N, K]}) of the checkpoint of `model` under `config`.

    model: the float model on the meta device (`dpq.models.source.meta_model`).
    """
    spec = spec_for(model.config)
    aliases = tied_aliases(model)
    layers = get_submodule(model, spec.layers)
    inside = spec.layers + "."
    rest = [TensorEntry.of(n, t) for n, t in model.state_dict().items() if not n.startswith(inside) and n not in aliases]
    units, modules = [rest], {}
    for i, layer in enumerate(layers):
        prefix = f"{spec.layers}.{i}"
        q = _quantized_skeleton(layer, spec, prefix, config)
        units.append([TensorEntry.of(f"{prefix}.{k}", t) for k, t in q.state_dict().items()])
        modules.update({f"{prefix}.{n}": [m.out_features, m.in_features] for n, m in q.named_modules()
                        if isinstance(m, W4A8Linear)})
    return units, aliases, modules


class CheckpointWriter:
    """Writes one checkpoint into `directory`: `write_rest`, `write_layer` for each layer, `finish`.

    resume_units: the units an earlier run of the same plan already wrote (see ShardedWriter).
    """

    def __init__(self, directory: Path, float_config, dtype: torch.dtype, config: QuantConfig, max_bytes: int,
                 resume_units: int = 0) -> None:
        self.dir = Path(directory)
        self.dtype = dtype
        skeleton = meta_model(float_config, dtype)
        self.units, self.aliases, self.modules = checkpoint_units(skeleton, config)
        self.plan: ShardPlan = plan_shards(self.units, max_bytes)
        self.spec = spec_for(float_config)
        self.config = config
        metadata = {"format": "pt", "dpq_format_version": str(FORMAT_VERSION)}
        self.shards = ShardedWriter(self.dir, self.plan, metadata, resume_units)

    def write_unit(self, index: int, tensors) -> None:
        """Write unit `index`; tensors: a mapping or callable name -> tensor (read one at a time)."""
        for e in self.units[index]:
            t = tensors(e.name) if callable(tensors) else tensors[e.name]
            if t.is_floating_point() and t.dtype != e.dtype and e.dtype.is_floating_point:
                t = t.to(e.dtype)
            self.shards.write(e.name, t)
        self.shards.flush()

    def write_rest(self, read) -> None:
        """Unit 0; read(name) -> tensor."""
        self.write_unit(0, read)

    def write_layer(self, i: int, layer) -> None:
        prefix = f"{self.spec.layers}.{i}."
        state = {prefix + k: v for k, v in layer.state_dict().items()}
        missing = [e.name for e in self.units[i + 1] if e.name not in state]
        if missing:
            raise WriteError(f"layer {i} has no tensor {missing[0]}: it was not quantized as planned")
        self.write_unit(i + 1, state)

    def finish(self, float_config, tokenizer, generation_config, block: dict) -> dict:
        """Close the shards, write config.json, the tokenizer, generation_config.json and the manifest.

        block: the quantization block (`dpq.io.checkpoint.quant_block`); returns the manifest.
        """
        digests = self.shards.finish()
        cfg = float_config.to_dict()
        cfg.pop("_name_or_path", None)
        cfg.pop("quantization_config", None)
        cfg["dtype"] = str(self.dtype).removeprefix("torch.")
        cfg["quantization_config"] = {**block, "tied": dict(sorted(self.aliases.items()))}
        (self.dir / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n", encoding="utf-8")
        if generation_config is not None:
            generation_config.save_pretrained(self.dir)
        if tokenizer is not None:
            save_tokenizer(tokenizer, self.dir)
        return write_manifest(self.dir, digests)


def write_manifest(directory: Path, digests: dict[str, str]) -> dict:
    """dpq_manifest.json: sha256 and size of every file (the shards' digests computed while writing)."""
    files = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            files[p.name] = {"sha256": digests.get(p.name) or _sha256(p), "bytes": p.stat().st_size}
    manifest = {"format_version": FORMAT_VERSION, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def save_tokenizer(tokenizer, path: Path) -> None:
    """Save and check that the saved tokenizer tokenizes the same after a reload."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    tokenizer.save_pretrained(path)
    reloaded = AutoTokenizer.from_pretrained(path)
    if reloaded(TOKENIZER_PROBE).input_ids != tokenizer(TOKENIZER_PROBE).input_ids:
        raise WriteError(
            "the saved tokenizer tokenizes differently after a reload (its merges or special tokens were lost): "
            "load the tokenizer from the original model directory, not from a GGUF file, and save again"
        )
