"""dpq inside other libraries: transformers' quantizer for `quant_method: "dpq"` (hf_quantizer)."""
