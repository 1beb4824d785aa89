"""Run a .tflite model with LiteRT's reference kernels and keep every tensor (test-side only).

The reference kernels (``OpResolverType.BUILTIN_REF``) are TFLite's readable scalar implementations, the
specification the optimized ones are tested against; ``experimental_preserve_all_tensors`` stops the
interpreter from reusing intermediate buffers, so every op's output can be read after the run.

Without ``ai_edge_litert`` (or ``tflite``) the tests skip with the install command as the reason, except
under CI (``NPUQ_CI=1``), where they fail (``support.helpers.skip_unless_ci``).
"""

from __future__ import annotations

import numpy as np

from support.helpers import skip_unless_ci

INSTALL = 'pip install "npuq[interop-check]"'


def litert_interpreter():
    """The ``Interpreter`` and ``OpResolverType`` of ai_edge_litert, or a skip (a failure on CI)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        skip_unless_ci(f"ai_edge_litert is not installed ({INSTALL})", allow_module_level=True)
    return Interpreter, OpResolverType


def require_tflite():
    """The ``tflite`` schema package (the writer needs it with ``flatbuffers``), or a skip (a failure on CI)."""
    try:
        import flatbuffers  # noqa: F401
        import tflite
    except ImportError:
        skip_unless_ci('the tflite / flatbuffers packages are not installed (pip install "npuq[interop]")', True)
    return tflite


def run_litert(model: bytes, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Run ``model`` on ``inputs`` (one array per subgraph input, in order) with the reference kernels.

    Returns the outputs in the subgraph's output order and every tensor that holds data after the run
    (inputs, constants and all intermediates) by name. An input whose shape differs from the model's is
    resized to (a batch, say) before the tensors are allocated.
    """
    Interpreter, OpResolverType = litert_interpreter()
    interp = Interpreter(
        model_content=bytes(model),
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True,
        num_threads=1,
    )
    details = interp.get_input_details()
    if len(details) != len(inputs):
        raise ValueError(f"the model has {len(details)} input(s), {len(inputs)} given")
    for d, x in zip(details, inputs, strict=True):
        if tuple(d["shape"]) != tuple(np.shape(x)):
            interp.resize_tensor_input(d["index"], list(np.shape(x)))
    interp.allocate_tensors()
    for d, x in zip(interp.get_input_details(), inputs, strict=True):
        arr = np.asarray(x)
        if arr.dtype != d["dtype"]:
            raise ValueError(f"input {d['name']!r} is {d['dtype'].__name__}, got {arr.dtype}")
        interp.set_tensor(d["index"], np.ascontiguousarray(arr))
    interp.invoke()
    outputs = [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]
    tensors: dict[str, np.ndarray] = {}
    for d in interp.get_tensor_details():
        try:
            value = interp.get_tensor(d["index"])
        except ValueError:  # a tensor without data (an absent optional input)
            continue
        tensors[d["name"]] = np.array(value, copy=True)
    return outputs, tensors
