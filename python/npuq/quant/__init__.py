"""Post-training quantization: graph preparation, weight quantizers, calibration and simulation.

Entry point: :func:`npuq.quantize` (the same as :func:`npuq.quant.quantize`).
"""

from npuq.quant.api import ACTIVATION_METHODS, WEIGHT_METHODS, QuantReport, evaluate, quantize
from npuq.quant.graph import Graph, TraceError, UnsupportedOpsError, prepare
from npuq.quant.simulate import QuantizedModel

__all__ = [
    "ACTIVATION_METHODS",
    "Graph",
    "QuantReport",
    "QuantizedModel",
    "TraceError",
    "UnsupportedOpsError",
    "WEIGHT_METHODS",
    "evaluate",
    "prepare",
    "quantize",
]
