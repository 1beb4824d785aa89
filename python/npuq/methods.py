"""Names of the quantization methods and arithmetic modes, importable without torch (the CLI needs
them to build its parser on machines that only verify vectors).

The method names are the declared names of their registries (:mod:`npuq.registry`), read without importing
a quantizer; the arithmetic modes come from :mod:`npuq._validate`, which checks them."""

from npuq._validate import OVERFLOW_POLICIES, ROUNDING_MODES
from npuq.registry import ACTIVATION_OBSERVERS, WEIGHT_QUANTIZERS

WEIGHT_METHODS = WEIGHT_QUANTIZERS.names()
# need calibration data (npuq.quantize collects it): read from the registry's declaration, no import
DATA_AWARE_WEIGHT_METHODS = WEIGHT_QUANTIZERS.select(data_aware=True)
ACTIVATION_METHODS = ACTIVATION_OBSERVERS.names()
ROUNDINGS = ROUNDING_MODES
OVERFLOWS = OVERFLOW_POLICIES

__all__ = ["ACTIVATION_METHODS", "DATA_AWARE_WEIGHT_METHODS", "OVERFLOWS", "ROUNDINGS", "WEIGHT_METHODS"]
