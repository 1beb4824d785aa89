"""Compiler: a quantized torch model (:class:`npuq.QuantizedModel`, integer mode) -> an NPU program.

The program holds exactly the integers the quantization simulation computes with, re-laid out for the
NPU: activations NHWC, conv weights OHWI, padding as (top, bottom, left, right), a fully-connected layer
behind a flatten reads its input in (H, W, C) order (its weight columns are permuted once here, so the
NPU's flatten is a plain reshape). Running the program therefore gives the simulation's integers; the
tests hold the two equal on every value.
"""

from __future__ import annotations

import numpy as np
import torch

from npuq.npu.program import InputSpec, Op, Program, ProgramError, validate
from npuq.quant.graph import Graph, conv_padding
from npuq.quant.simulate import QuantizedModel


class CompileError(ValueError):
    """The quantized model cannot become an NPU program; the message says which node and why."""


def compile_model(qmodel: QuantizedModel, *, name: str | None = None) -> Program:
    """Compile an integer-mode :class:`npuq.QuantizedModel` into a validated :class:`Program`.

    ``name``: the program's model name (default: the quantized model's). Raises :class:`CompileError`
    for weight-only models, graphs with float ops, and layouts the NPU cannot express.
    """
    if not isinstance(qmodel, QuantizedModel):
        raise TypeError(f"npuq.compile takes the QuantizedModel returned by npuq.quantize, got {type(qmodel).__name__}")
    if not qmodel.integer:
        raise CompileError(
            "the model was quantized weight-only (activations=None): the NPU needs int8 "
            "activations; quantize with activations='mse' (or another observer)"
        )
    graph: Graph = qmodel.graph
    bad = graph.unsupported()
    if bad:
        listing = ", ".join(n.describe() for n in bad)
        raise CompileError(f"{len(bad)} op(s) have no NPU equivalent and ran in float in the simulation: {listing}")
    qp = qmodel.qparams
    weights = qmodel.weights
    ops: list[Op] = []
    spatial_flat: dict[str, tuple[int, int, int]] = {}  # flatten outputs of (C, H, W) maps with H * W > 1
    input_spec = None
    output = None
    for node in graph:
        k = node.kind
        if k == "input":
            shape = tuple(int(d) for d in graph.input_shape)
            if len(shape) == 3:
                shape = (shape[1], shape[2], shape[0])  # (C, H, W) -> (H, W, C)
            elif len(shape) != 1:
                raise CompileError(
                    f"input '{node.name}' has shape {shape}; the NPU takes (C, H, W) images or (K,) vectors"
                )
            q = qp[node.name]
            input_spec = InputSpec(
                name=node.name, shape=shape, scale=float(np.float32(q.scale)), zero_point=int(q.zero_point)
            )
            continue
        if k == "output":
            output = node.inputs[0]
            continue
        for src in node.inputs:
            if src in spatial_flat and k != "linear":
                raise CompileError(
                    f"'{node.path}' reads the flattened (C, H, W) map '{src}' with H * W > 1; the "
                    f"NPU flattens in (H, W, C) order, which only a fully-connected layer can undo"
                )
        q = qp[node.name]
        common = dict(
            name=node.name, inputs=list(node.inputs), scale=float(q.scale), zero_point=int(q.zero_point), path=node.path
        )
        if k in ("conv", "linear"):
            lp = qmodel.layers[node.name]
            w = lp.weight
            if k == "conv":
                a = node.attrs
                weight = w.permute(0, 2, 3, 1)  # OIHW -> OHWI
                attrs = dict(
                    stride=list(a["stride"]),
                    padding=list(conv_padding(a)),
                    dilation=list(a["dilation"]),
                    groups=int(a["groups"]),
                )
                kind = "conv2d"
            else:
                weight = w
                src = node.inputs[0]
                if src in spatial_flat:
                    c, h, wd = spatial_flat[src]
                    weight = w.reshape(w.shape[0], c, h, wd).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
                attrs = {}
                kind = "fully_connected"
            attrs.update(
                input_zero_point=lp.input_zero_point,
                output_zero_point=lp.output_zero_point,
                act_min=lp.act_min,
                act_max=lp.act_max,
                weight_bits=int(weights[node.name].bits),
            )
            tensors = dict(
                weight=_int(weight, np.int8),
                bias=_int(lp.bias, np.int32),
                multiplier=_int(lp.multiplier, np.int32, per_layer=True),
                exponent=_int(lp.exponent, np.int32, per_layer=True),
                shift=_int(lp.shift, np.uint8),
            )
            ops.append(Op(kind=kind, attrs=attrs, tensors=tensors, **common))
        elif k == "add":
            ops.append(Op(kind="add", attrs=dict(qmodel.add_params[node.name]), **common))
        elif k == "avg_pool":
            a = node.attrs
            ph, pw = a["padding"]
            ops.append(
                Op(
                    kind="avg_pool2d",
                    attrs=dict(
                        kernel=list(a["kernel_size"]),
                        stride=list(a["stride"]),
                        padding=[ph, ph, pw, pw],
                        count_include_pad=bool(a["count_include_pad"]),
                        input_zero_point=int(q.zero_point),
                        act_min=-128,
                        act_max=127,
                    ),
                    **common,
                )
            )
        elif k == "global_pool":
            ops.append(Op(kind="global_avg_pool", attrs=dict(act_min=-128, act_max=127), **common))
        elif k == "max_pool":
            a = node.attrs
            ph, pw = a["padding"]
            ops.append(
                Op(
                    kind="max_pool2d",
                    attrs=dict(
                        kernel=list(a["kernel_size"]),
                        stride=list(a["stride"]),
                        padding=[ph, ph, pw, pw],
                        ceil_mode=bool(a.get("ceil_mode", False)),
                    ),
                    **common,
                )
            )
        elif k in _FORMAT2_OPS:
            kind, attrs, tensors = _FORMAT2_OPS[k](qmodel, node, q)
            ops.append(Op(kind=kind, attrs=attrs, tensors=tensors, **common))
        elif k == "flatten":
            src = graph[node.inputs[0]]
            shape = src.shape if src.kind != "input" else (None, *graph.input_shape)
            if shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1:
                spatial_flat[node.name] = (int(shape[1]), int(shape[2]), int(shape[3]))
            ops.append(Op(kind="flatten", attrs={}, **common))
        else:  # pragma: no cover - the graph has no other kinds once float ops are refused
            raise CompileError(f"node '{node.path}' of kind {k!r} has no NPU op")
    if output in spatial_flat:
        raise CompileError(
            f"the output '{output}' is a flattened (C, H, W) map with H * W > 1, whose element order "
            f"on the NPU (H, W, C) would differ from torch's"
        )
    info = {"quantization": dict(qmodel.report.config) if qmodel.report is not None else {}, "source": "npuq.compile"}
    program = Program(
        input=input_spec,
        ops=ops,
        output=output,
        rounding=qmodel.rounding,
        overflow=qmodel.overflow,
        model=name if name is not None else (graph.model_name or "model"),
        info=info,
    )
    try:
        validate(program, "compiled program")
    except ProgramError as exc:  # a compiler bug or a model beyond the format: say which
        raise CompileError(str(exc)) from exc
    return program


# graph node kind -> (qmodel, node, its output QParams) -> (op kind, attrs, tensors): the ops of format 2,
# whose integer parameters the quantized model holds already (QuantizedModel.op_params / lut_tables)
_FORMAT2_OPS = {
    "lut": lambda qm, n, q: ("lut", {"function": n.attrs["function"]}, {"table": qm.lut_tables[n.name].copy()}),
    "mul": lambda qm, n, q: ("mul", dict(qm.op_params[n.name]), {}),
    "concat": lambda qm, n, q: ("concat", {k: _plain(v) for k, v in qm.op_params[n.name].items()}, {}),
    "channel_shuffle": lambda qm, n, q: ("channel_shuffle", {"groups": int(n.attrs["groups"])}, {}),
    "slice": lambda qm, n, q: ("slice", {"begin": int(n.attrs["begin"]), "end": int(n.attrs["end"])}, {}),
    "pad": lambda qm, n, q: ("pad", {"padding": [int(p) for p in n.attrs["padding"]], "value": int(q.zero_point)}, {}),
    "upsample": lambda qm, n, q: (
        "upsample",
        {"scale": [int(f) for f in n.attrs["scale"]], "mode": n.attrs["mode"], "zero_point": int(q.zero_point)},
        {},
    ),
}


def _plain(v):
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else int(v)


def _int(v, dtype, per_layer: bool = False) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        arr = v.detach().cpu().numpy()
    else:
        arr = np.asarray([int(v)] if per_layer else v)
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise CompileError(f"a value outside {np.dtype(dtype).name} ([{arr.min()}, {arr.max()}])")
    return np.ascontiguousarray(arr.astype(dtype))


__all__ = ["CompileError", "compile_model"]
