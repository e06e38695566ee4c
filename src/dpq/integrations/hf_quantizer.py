"""transformers' quantizer for `quant_method: "dpq"`: `from_pretrained` loads dpq checkpoints.

After `import dpq` (which calls `register()`):

    model = AutoModelForCausalLM.from_pretrained("out/smollm2-dpq-gar")      # dtype=, device_map= work
    pipe = pipeline("text-generation", model="out/smollm2-dpq-gar")

How a load runs (transformers calls these hooks; see transformers/quantizers/base.py):

    DpqConfig.from_dict           config.json's quantization_config block, kept as it is
    _process_model_before...      the model exists on the meta device: every Linear the block names
                                  becomes a W4A8Linear (meta buffers), then the files are checked
                                  (dpq.io.verify: manifest and sha256, tensor names, shapes, dtypes,
                                  scale values) before any weight is read
    (transformers loads)          each stored tensor lands in its buffer, in the buffer's own dtype:
                                  codes and zero points uint8, scales as stored, s_w and s_x float32
    _process_model_after...       every float tensor is finite

`save_pretrained` writes the buffers as they are and the block with `"manifest": false` (transformers
writes no dpq_manifest.json), which is how a later load knows a missing manifest is expected.
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from dpq.io.checkpoint import CheckpointError, read_quant_block
from dpq.io.load import swap_in_w4a8
from dpq.io.verify import (
    NO_MANIFEST,
    V1_CODES,
    check_finite,
    check_headers,
    check_manifest,
    check_quant_values,
    read_headers,
)

QUANT_METHOD = "dpq"


class DpqConfig(QuantizationConfigMixin):
    """config.json's `quantization_config` of a dpq checkpoint (see dpq.io.checkpoint.quant_block).

    The block is kept key for key; `read_quant_block` validates it when a model loads.
    `to_dict()` is what save_pretrained writes: the block plus `"manifest": false`.
    """

    def __init__(self, **block):
        block.pop("config", None)  # a validated QuantConfig object, never serialized
        self.__dict__.update(copy.deepcopy(block))
        self.quant_method = QUANT_METHOD

    def to_dict(self) -> dict:
        return {**copy.deepcopy(self.__dict__), NO_MANIFEST: False}


class DpqHfQuantizer(HfQuantizer):
    """Loads pre-quantized dpq checkpoints (W4A8Linear modules); quantizing on the fly needs calibration: `dpq quantize`."""

    requires_calibration = True

    def __init__(self, quantization_config: DpqConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.block: dict | None = None

    def validate_environment(self, *args, **kwargs) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("dpq checkpoints cannot be offloaded to disk: give a device_map without \"disk\"")

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not checkpoint_files:
            raise CheckpointError("dpq checkpoints load from a directory of safetensors files, not a state_dict")
        files = [Path(f) for f in checkpoint_files]
        if any(f.suffix != ".safetensors" for f in files):
            raise CheckpointError(f"{files[0]} is not a safetensors file: dpq checkpoints store safetensors")
        directory = files[0].parent
        self.block = block = read_quant_block(directory)
        local = Path(str(model.config.name_or_path)).is_dir()
        if local:  # a hub snapshot holds only the files transformers fetched: the hub checks those
            check_manifest(directory, block, files)
        swap_in_w4a8(model, block)
        headers = read_headers(files, block["format_version"])
        tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
        check_headers(headers, model.state_dict(), block, tied)
        check_quant_values(headers, block)
        return model

    def update_weight_conversions(self, weight_conversions, model):
        conversions = super().update_weight_conversions(weight_conversions, model)
        if self.quantization_config.format_version == 1:
            from transformers.core_model_loading import WeightRenaming  # noqa: PLC0415

            conversions = [WeightRenaming(rf"\.{V1_CODES}$", ".weight"), *conversions]
        return conversions

    def _process_model_after_weight_loading(self, model, **kwargs):
        check_finite(model.state_dict().items(), self.block["modules"])
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Make "dpq" known to transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(DpqConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(DpqHfQuantizer)


