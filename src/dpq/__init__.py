"""dpq: W4A8 (INT4 weights, FP8 activations) quantization of LLMs with DPQ and GAR.

Importing dpq registers its quantizer with transformers, so that
`AutoModelForCausalLM.from_pretrained(DIR)` loads a dpq checkpoint (dpq.integrations.hf_quantizer).
"""

__version__ = "0.1.0"

from dpq.config import ActSpec, CalibSpec, FP8Spec, QuantConfig, SolverSpec, WeightSpec  # noqa: E402

__all__ = ["ActSpec", "CalibSpec", "FP8Spec", "QuantConfig", "SolverSpec", "WeightSpec", "__version__"]

from dpq.api import QuantResult, export, info, load, quantize, quantize_to_disk, save  # noqa: E402

__all__ += ["QuantResult", "export", "info", "load", "quantize", "quantize_to_disk", "save"]

from dpq.integrations.hf_quantizer import register as _register  # noqa: E402

_register()
