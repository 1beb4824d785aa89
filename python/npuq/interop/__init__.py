"""Exchange with other toolchains: int8 TFLite flatbuffers in and out, ONNX (QDQ) out.

Nothing here imports TensorFlow: TFLite files are read and written with the ``tflite`` schema package (the
generated flatbuffer accessors) and ``flatbuffers``; ONNX with ``onnx``. All of them are the ``interop``
extra, imported when a function needs them.
"""

import importlib

# the packages of the two extras: the checks against other runtimes need the second
_CHECK_PACKAGES = ("onnxruntime", "ai_edge_litert")


def require(module: str, purpose: str):
    """``import module``, or a ModuleNotFoundError that names ``purpose`` and the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        extra = "interop-check" if module in _CHECK_PACKAGES else "interop"
        raise ModuleNotFoundError(
            f'{purpose} needs the {module} package: pip install "npuq[{extra}]"', name=exc.name
        ) from None


def layer_multipliers(op):
    """The real requantization multiplier of each output channel of a conv2d / fully_connected op:
    ``M0 * 2^(e - shift - 31)`` (float64; 0 where the multiplier is flushed). Times ``s_out / s_in`` it is
    the channel's weight scale."""
    import numpy as np

    m0 = op.tensors["multiplier"].astype(np.float64)
    e = op.tensors["exponent"].astype(np.float64)
    shift = op.tensors["shift"].astype(np.float64)
    return m0 * np.exp2(e - shift - 31.0)
