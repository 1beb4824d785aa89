"""Names of the quantization methods and arithmetic modes, importable without torch (the CLI needs
them to build its parser on machines that only verify vectors)."""

WEIGHT_METHODS = ("per_layer", "per_channel", "wess", "wess_mse", "wess_output")
DATA_AWARE_WEIGHT_METHODS = ("wess_output",)  # need calibration data (npuq.quantize collects it)
ACTIVATION_METHODS = ("minmax", "percentile", "mse", "kl")
ROUNDINGS = ("double", "single")
OVERFLOWS = ("raise", "saturate", "wrap")

__all__ = ["ACTIVATION_METHODS", "DATA_AWARE_WEIGHT_METHODS", "OVERFLOWS", "ROUNDINGS", "WEIGHT_METHODS"]
