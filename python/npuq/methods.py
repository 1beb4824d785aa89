"""Names of the quantization methods and arithmetic modes, importable without torch (the CLI needs
them to build its parser on machines that only verify vectors)."""

WEIGHT_METHODS = ("per_layer", "per_channel", "wess", "wess_mse")
ACTIVATION_METHODS = ("minmax", "percentile", "mse", "kl")
ROUNDINGS = ("double", "single")
OVERFLOWS = ("raise", "saturate", "wrap")

__all__ = ["ACTIVATION_METHODS", "OVERFLOWS", "ROUNDINGS", "WEIGHT_METHODS"]
