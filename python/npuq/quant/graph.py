"""Graph preparation: a traced torch model becomes a flat list of NPU-level ops.

`prepare(model, example_input)` traces the model with ``torch.fx``, recognises the ops the NPU runs
(convolution incl. depthwise, fully-connected, residual add, average / global / max pooling, flatten,
elementwise activations as table lookups, the squeeze-excitation multiply, channel concatenation,
shuffle and split, zero padding, nearest / bilinear upsampling),
folds every batch norm into the convolution or linear layer in front of it, and fuses ReLU / ReLU6 into
the clamp of the op that produces their input. Everything else becomes a ``float_op`` node that still
runs in float (so any traceable model goes through) and is listed by `Graph.unsupported()`; the
quantizer refuses such graphs unless told to keep those ops in float.

The graph is the common input of the weight quantizers, cross-layer equalization, calibration, the
quantization simulation and (later) the NPU compiler, so it holds plain tensors and attributes, not
torch modules.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

NPU_KINDS = (
    "conv",
    "linear",
    "add",
    "avg_pool",
    "global_pool",
    "max_pool",
    "flatten",
    "lut",
    "mul",
    "concat",
    "channel_shuffle",
    "slice",
    "pad",
    "upsample",
)
# the nodes whose output gets int8 parameters of its own (chosen by an observer in calibration); pooling,
# flatten, the data movements and the output keep those of their input
OBSERVED_KINDS = ("input", "conv", "linear", "add", "lut", "mul", "concat", "float_op")
ACTIVATIONS = (None, "relu", "relu6")


class TraceError(RuntimeError):
    """The model could not be traced by torch.fx; the message names the module that failed."""


class UnsupportedOpsError(ValueError):
    """The graph contains ops the NPU cannot run; the message lists each one with its module path."""


@dataclass
class Node:
    """One op of the prepared graph.

    ``weight``/``bias`` are the float parameters after batch-norm folding (conv: ``(C_out, C_in/g, KH,
    KW)``, linear: ``(C_out, K)``); ``bn`` keeps the folded batch norm's ``(beta, |gamma|)`` per output
    channel (the pre-activation mean and spread), which high-bias absorption needs.
    """

    name: str
    kind: str
    inputs: list[str]
    path: str
    act: str | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    bn: tuple[torch.Tensor, torch.Tensor] | None = None
    shape: tuple[int, ...] | None = None
    # float_op only: the callable and its argument template (fx nodes are replaced by their names)
    target: Callable | None = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    op_name: str = ""

    @property
    def is_layer(self) -> bool:
        return self.kind in ("conv", "linear")

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def is_depthwise(self) -> bool:
        return (
            self.kind == "conv"
            and self.attrs["groups"] > 1
            and self.attrs["groups"] == self.weight.shape[0]
            and self.weight.shape[1] == 1
        )

    def describe(self) -> str:
        act = f"+{self.act}" if self.act else ""
        what = self.op_name or self.kind
        return f"{self.path or self.name} ({what}{act})"


class _Ref:
    """Placeholder for a graph value inside a float_op's argument template."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"<{self.name}>"


class Graph:
    """A prepared model: nodes in execution order, one input, one output."""

    def __init__(
        self,
        nodes: list[Node],
        input_name: str,
        output_name: str,
        modules: dict[str, nn.Module],
        input_shape: tuple[int, ...],
        model_name: str = "",
    ):
        self.nodes = nodes
        self.input_name = input_name
        self.output_name = output_name
        self.modules = modules  # float_op modules by node name
        self.input_shape = input_shape  # example input shape without the batch dimension
        self.model_name = model_name
        self.notes: list[str] = []  # what preparation changed that a user should know (see prepare)
        self._index = {n.name: n for n in nodes}

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self):
        return len(self.nodes)

    def layers(self) -> list[Node]:
        return [n for n in self.nodes if n.is_layer]

    def users(self, name: str) -> list[Node]:
        return [
            n
            for n in self.nodes
            if name in n.inputs
            or any(isinstance(a, _Ref) and a.name == name for a in _flatten_args((n.args, n.kwargs)))
        ]

    def unsupported(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "float_op"]

    def check_supported(self, hint: str = "") -> None:
        bad = self.unsupported()
        if bad:
            listing = "\n".join(f"  - {n.describe()}" for n in bad)
            raise UnsupportedOpsError(
                f"{len(bad)} op(s) of {self.model_name or 'the model'} have no NPU equivalent:\n{listing}\n"
                f"Supported: conv2d (incl. depthwise/grouped), linear, batch norm, ReLU / ReLU6 and elementwise "
                f"activations as tables (hardswish, hardsigmoid, sigmoid, tanh, SiLU, GELU, leaky ReLU, clamps), "
                f"residual add, squeeze-excitation multiply, concat, channel shuffle / split, zero pad, "
                f"nearest / bilinear upsampling, average/global/max pooling, flatten, dropout "
                f"(docs/quantization.md 1).{hint}"
            )

    def clone(self) -> "Graph":
        nodes = [copy.copy(n) for n in self.nodes]
        for n in nodes:
            n.inputs = list(n.inputs)
            n.attrs = dict(n.attrs)
            if n.weight is not None:
                n.weight = n.weight.clone()
            if n.bias is not None:
                n.bias = n.bias.clone()
            if n.bn is not None:
                n.bn = (n.bn[0].clone(), n.bn[1].clone())
        graph = Graph(nodes, self.input_name, self.output_name, self.modules, self.input_shape, self.model_name)
        graph.notes = list(self.notes)
        return graph

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError unless ``x`` is a batch of the per-sample shape the graph was prepared for (the shapes,
        and any padding computed from them, were fixed then)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"the input must be a torch tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(
                f"{self.model_name or 'the model'} was prepared for inputs of shape (N, "
                f"{', '.join(map(str, self.input_shape))}); got {tuple(x.shape)}. Prepare (quantize) "
                f"it again with an example input of the new size"
            )

    @torch.no_grad()
    def run_float(self, x: torch.Tensor, capture: bool = False):
        """Run the prepared graph in float32 (folded weights, fused activations).

        Returns the output, or ``(output, {node name: tensor})`` with ``capture=True``.
        """
        self.check_input(x)
        env: dict[str, torch.Tensor] = {}
        for node in self.nodes:
            env[node.name] = run_float_node(self, node, env, x)
        out = env[self.output_name]
        return (out, env) if capture else out

    def summary(self) -> str:
        lines = []
        for n in self.nodes:
            extra = ""
            if n.is_layer:
                extra = f" w{tuple(n.weight.shape)}"
                if n.kind == "conv":
                    extra += f" s{n.attrs['stride']} p{n.attrs['padding']} g{n.attrs['groups']}"
            lines.append(f"{n.name:<28} {n.kind:<12} {n.act or '':<6} <- {', '.join(n.inputs):<40}{extra}")
        return "\n".join(lines)


def _flatten_args(obj):
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flatten_args(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flatten_args(o)
    else:
        yield obj


def _resolve(obj, env):
    if isinstance(obj, _Ref):
        return env[obj.name]
    if isinstance(obj, tuple):
        return tuple(_resolve(o, env) for o in obj)
    if isinstance(obj, list):
        return [_resolve(o, env) for o in obj]
    if isinstance(obj, dict):
        return {k: _resolve(v, env) for k, v in obj.items()}
    return obj


def apply_activation(y: torch.Tensor, act: str | None) -> torch.Tensor:
    if act == "relu":
        return torch.relu(y)
    if act == "relu6":
        return torch.clamp(y, 0.0, 6.0)
    return y


def lut_function(name: str, params: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """The float function of a ``lut`` node (docs/arithmetic.md 9 lists the same formulas)."""
    if name == "clamp":
        return lambda t: torch.clamp(t, params["lo"], params["hi"])
    if name == "leaky_relu":
        return lambda t: F.leaky_relu(t, params["alpha"])
    if name == "gelu_tanh":
        return lambda t: F.gelu(t, approximate="tanh")
    return _LUT_FUNCTIONS[name]


_LUT_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": torch.relu,
    "relu6": lambda t: torch.clamp(t, 0.0, 6.0),
}


def conv_padding(attrs: dict) -> tuple[int, int, int, int]:
    """A conv node's padding as (top, bottom, left, right); nodes keep torch's (h, w) when it is symmetric."""
    p = tuple(int(v) for v in attrs["padding"])
    return p if len(p) == 4 else (p[0], p[0], p[1], p[1])


def run_float_node(
    graph: Graph,
    node: Node,
    env: dict,
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float semantics of one node; ``weight``/``bias`` override the node's (e.g. dequantized weights)."""
    k = node.kind
    if k == "input":
        return x
    ins = [env[i] for i in node.inputs]
    w = node.weight if weight is None else weight
    b = node.bias if bias is None else bias
    if k == "conv":
        a = node.attrs
        pad = a["padding"]
        if len(pad) == 4:  # (top, bottom, left, right), e.g. a folded TF-SAME pad: F.pad takes (l, r, t, b)
            y = F.conv2d(
                F.pad(ins[0], (pad[2], pad[3], pad[0], pad[1])), w, b, a["stride"], 0, a["dilation"], a["groups"]
            )
        else:
            y = F.conv2d(ins[0], w, b, a["stride"], pad, a["dilation"], a["groups"])
    elif k == "linear":
        y = F.linear(ins[0], w, b)
    elif k == "add":
        y = ins[0] + ins[1]
    elif k == "avg_pool":
        a = node.attrs
        y = F.avg_pool2d(ins[0], a["kernel_size"], a["stride"], a["padding"], count_include_pad=a["count_include_pad"])
    elif k == "global_pool":
        y = ins[0].mean(dim=(2, 3), keepdim=True)
    elif k == "max_pool":
        a = node.attrs
        y = F.max_pool2d(ins[0], a["kernel_size"], a["stride"], a["padding"], ceil_mode=a.get("ceil_mode", False))
    elif k == "flatten":
        y = torch.flatten(ins[0], 1)
    elif k == "lut":
        y = lut_function(node.attrs["function"], node.attrs.get("params", {}))(ins[0])
    elif k == "mul":
        y = ins[0] * ins[1]
    elif k == "concat":
        y = torch.cat(ins, dim=1)
    elif k == "channel_shuffle":
        n, c, h, w = ins[0].shape
        g = node.attrs["groups"]
        y = ins[0].reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
    elif k == "slice":
        y = ins[0][:, node.attrs["begin"] : node.attrs["end"]]
    elif k == "pad":
        t, b, left, r = node.attrs["padding"]
        y = F.pad(ins[0], (left, r, t, b))
    elif k == "upsample":
        mode = node.attrs["mode"]
        corners = {"align_corners": False} if mode == "bilinear" else {}
        y = F.interpolate(ins[0], scale_factor=node.attrs["scale"], mode=mode, **corners)
    elif k == "output":
        return ins[0]
    elif k == "float_op":
        args = _resolve(node.args, env)
        kwargs = _resolve(node.kwargs, env)
        target = graph.modules[node.name] if node.name in graph.modules else node.target
        return target(*args, **kwargs)
    else:  # pragma: no cover - kinds are closed
        raise AssertionError(k)
    return apply_activation(y, node.act)


# --------------------------------------------------------------------------------------------- tracing


class _PathTracer(fx.Tracer):
    """fx tracer that remembers which module was being traced when tracing fails."""

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:  # annotate the innermost module only
            if not hasattr(exc, "_npuq_module"):
                try:
                    path = self.path_of_module(m)
                except NameError:
                    path = type(m).__name__
                exc._npuq_module = (path, type(m).__name__)
            raise


def trace(model: nn.Module) -> fx.GraphModule:
    tracer = _PathTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = getattr(exc, "_npuq_module", None)
        at = f"module '{where[0]}' ({where[1]})" if where else f"the top-level forward of {type(model).__name__}"
        failed = dict(model.named_modules()).get(where[0]) if where else None
        if callable(getattr(failed, "static_for_input", None)):
            raise TraceError(
                f"torch.fx could not trace {at}: its padding depends on the input size. Fix the input "
                f"size first: npuq.quant.prepare(model, example_input) (or npuq.quantize) does it "
                f"from the example input"
            ) from exc
        raise TraceError(
            f"torch.fx could not trace {at}: {type(exc).__name__}: {exc}. Data-dependent control flow "
            f"(if/for on tensor values) cannot be traced; rewrite that forward without it, or mark the module "
            f"as a leaf"
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


# ---------------------------------------------------------------------------------------- recognition

_PASSTHROUGH_MODULES = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity)
_PASSTHROUGH_FUNCTIONS = {F.dropout, F.dropout2d, F.dropout1d, torch.nn.functional.alpha_dropout}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}


def _lut_of_module(m: nn.Module) -> tuple[str, dict] | None:
    """(function, params) of a ``lut`` node for an activation module, or None."""
    if isinstance(m, nn.Hardswish):
        return "hardswish", {}
    if isinstance(m, nn.Hardsigmoid):
        return "hardsigmoid", {}
    if isinstance(m, nn.Sigmoid):
        return "sigmoid", {}
    if isinstance(m, nn.Tanh):
        return "tanh", {}
    if isinstance(m, nn.SiLU):
        return "silu", {}
    if isinstance(m, nn.GELU):
        return ("gelu_tanh" if m.approximate == "tanh" else "gelu"), {}
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", {"alpha": float(m.negative_slope)}
    if isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6) and (m.min_val, m.max_val) != (0.0, 6.0):
        return "clamp", {"lo": float(m.min_val), "hi": float(m.max_val)}
    return None


_LUT_CALLS = {
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    F.silu: "silu",
}


def _lut_of_function(fxn) -> tuple[str, dict] | None:
    t = fxn.target
    if not fxn.args or not _is_fx(fxn.args[0]):
        return None
    if t in _LUT_CALLS:
        return _LUT_CALLS[t], {}
    if t is F.gelu:
        return ("gelu_tanh" if fxn.kwargs.get("approximate", "none") == "tanh" else "gelu"), {}
    if t is F.leaky_relu:
        return "leaky_relu", {"alpha": float(_arg(fxn, 1, "negative_slope", 0.01))}
    if t is F.hardtanh:
        bounds = (_arg(fxn, 1, "min_val", -1.0), _arg(fxn, 2, "max_val", 1.0))
    elif t in (torch.clamp, torch.clip):
        bounds = (_arg(fxn, 1, "min", None), _arg(fxn, 2, "max", None))
    else:
        return None
    lo, hi = bounds
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds) or lo > hi:
        return None  # a one-sided or tensor-valued clamp stays a float op
    if lo == 0 and hi == 6:
        return None  # ReLU6: fused into the op in front (or a table of its own, _fuse_activations)
    return "clamp", {"lo": float(lo), "hi": float(hi)}


def _mul_order(args) -> tuple | None:
    """(full, broadcast) inputs of an NPU ``mul``: equal shapes, or an (N, C, 1, 1) scale of an (N, C, H, W)
    value (either order); None for anything else."""
    a, b = (_shape(v) for v in args)
    if a is None or b is None:
        return None
    if a == b:
        return tuple(args)
    for full, scale, (x, y) in ((a, b, args), (b, a, args[::-1])):
        if len(full) == 4 and scale == (full[0], full[1], 1, 1):
            return x, y
    return None


def _concat_inputs(fxn) -> list | None:
    """The inputs of a channel concatenation ``torch.cat(values, dim=1)`` of 4-D or 2-D values, or None."""
    values = _arg(fxn, 0, "tensors", None)
    dim = _arg(fxn, 1, "dim", 0)
    if not isinstance(values, (list, tuple)) or not values or not all(_is_fx(v) for v in values):
        return None
    shapes = [_shape(v) for v in values]
    if any(s is None or len(s) not in (2, 4) for s in shapes) or not isinstance(dim, int):
        return None
    if dim % len(shapes[0]) != 1:
        return None
    return list(values)


def _upsample_scale(fxn, mode, align_corners) -> tuple[int, int] | None:
    """Integer (f_h, f_w) of a nearest or half-pixel bilinear upsampling of an (N, C, H, W) value, from the
    traced shapes, or None (other modes, align_corners=True, non-integer factors)."""
    if mode not in ("nearest", "bilinear") or (mode == "bilinear" and align_corners):
        return None
    ins, outs = _shape(fxn.args[0]) if fxn.args and _is_fx(fxn.args[0]) else None, _shape(fxn)
    if ins is None or outs is None or len(ins) != 4 or len(outs) != 4:
        return None
    if outs[2] % ins[2] or outs[3] % ins[3]:
        return None
    return outs[2] // ins[2], outs[3] // ins[3]


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _is_one(size) -> bool:
    """An adaptive pooling output size of 1 x 1 (None entries keep the input size: not global)."""
    if isinstance(size, int):
        return size == 1
    return isinstance(size, (tuple, list)) and len(size) == 2 and all(v == 1 for v in size)


def _shape(fxnode) -> tuple[int, ...] | None:
    meta = fxnode.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _arg(fxnode, index, name, default):
    if len(fxnode.args) > index:
        return fxnode.args[index]
    return fxnode.kwargs.get(name, default)


def _is_fx(a) -> bool:
    return isinstance(a, fx.Node)


def _where(fxn, what: str) -> str:
    """``module.path.what`` for an op called inside a submodule's forward (fx records the module stack)."""
    stack = fxn.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        if path:
            return f"{path}.{what}"
    return what


class _Builder:
    def __init__(self, gm: fx.GraphModule, model_name: str):
        self.gm = gm
        self.model_name = model_name
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.alias: dict[str, str] = {}
        self.float_modules: dict[str, nn.Module] = {}
        self.input_name = None
        self.output_name = None
        self.pending: dict[str, tuple] = {}  # fx name -> a step of a shuffle / split pattern (_split_channels)

    def src(self, a) -> str:
        name = a.name
        while name in self.alias:
            name = self.alias[name]
        return name

    def add(self, fxn, kind, inputs, path, **kw):
        node = Node(name=fxn.name, kind=kind, inputs=[self.src(i) for i in inputs], path=path, shape=_shape(fxn), **kw)
        self.nodes.append(node)
        return node

    def float_op(self, fxn, op_name: str, path: str):
        def to_ref(a):
            return _Ref(self.src(a))

        args = fx.node.map_arg(fxn.args, to_ref)
        kwargs = fx.node.map_arg(fxn.kwargs, to_ref)
        inputs = [r.name for r in _flatten_args((args, kwargs)) if isinstance(r, _Ref)]
        node = Node(
            name=fxn.name,
            kind="float_op",
            inputs=inputs,
            path=path,
            shape=_shape(fxn),
            args=args,
            kwargs=kwargs,
            op_name=op_name,
        )
        if fxn.op == "call_module":
            self.float_modules[fxn.name] = self.modules[fxn.target]
        elif fxn.op == "call_method":
            method = fxn.target
            node.target = lambda obj, *a, _m=method, **k: getattr(obj, _m)(*a, **k)
        elif fxn.op == "get_attr":
            value = _fetch_attr(self.gm, fxn.target)
            node.target = lambda _v=value: _v
        else:
            node.target = fxn.target
        self.nodes.append(node)

    def passthrough(self, fxn, src):
        self.alias[fxn.name] = self.src(src)

    def activation(self, fxn, src, act: str, path: str):
        # fused later; for now a standalone activation node
        self.add(fxn, "act", [src], path, act=act)

    # ------------------------------------------------------------------ per fx node
    def visit(self, fxn: fx.Node):
        op = fxn.op
        if op == "placeholder":
            if self.input_name is not None:
                raise UnsupportedOpsError(
                    f"{self.model_name}: the NPU graph takes exactly one input; forward() has several "
                    f"({self.input_name}, {fxn.name})"
                )
            self.input_name = fxn.name
            self.add(fxn, "input", [], "input")
        elif op == "output":
            out = fxn.args[0]
            if not _is_fx(out):
                raise UnsupportedOpsError(
                    f"{self.model_name}: forward() must return one tensor, it returns {type(out).__name__}"
                )
            self.output_name = fxn.name
            self.add(fxn, "output", [out], "output")
        elif op == "call_module":
            self.visit_module(fxn, self.modules[fxn.target])
        elif op == "call_function":
            self.visit_function(fxn)
        elif op == "call_method":
            self.visit_method(fxn)
        elif op == "get_attr":
            self.float_op(fxn, f"get_attr {fxn.target}", fxn.target)
        else:  # pragma: no cover
            self.float_op(fxn, op, fxn.name)

    def visit_module(self, fxn, m):
        path = fxn.target
        x = fxn.args[0] if fxn.args else None
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            w = m.weight.detach().float().clone()
            b = m.bias.detach().float().clone() if m.bias is not None else torch.zeros(w.shape[0])
            self.add(
                fxn,
                "conv",
                [x],
                path,
                weight=w,
                bias=b,
                attrs=dict(
                    stride=_pair(m.stride), padding=_pair(m.padding), dilation=_pair(m.dilation), groups=int(m.groups)
                ),
            )
        elif isinstance(m, nn.Conv2d) and isinstance(m.padding, str) and m.padding_mode == "zeros":
            self.conv_same_padding(fxn, m, x, path)
        elif isinstance(m, nn.Linear):
            w = m.weight.detach().float().clone()
            b = m.bias.detach().float().clone() if m.bias is not None else torch.zeros(w.shape[0])
            self.add(fxn, "linear", [x], path, weight=w, bias=b)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.track_running_stats and m.running_var is not None:
            self.add(fxn, "bn", [x], path, attrs=dict(module=m))
        elif isinstance(m, nn.ReLU):
            self.activation(fxn, x, "relu", path)
        elif isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0):
            self.activation(fxn, x, "relu6", path)
        elif (table := _lut_of_module(m)) is not None:
            self.add(fxn, "lut", [x], path, attrs=dict(function=table[0], params=table[1]))
        elif isinstance(m, nn.Upsample) and (scale := _upsample_scale(fxn, m.mode, m.align_corners)) is not None:
            self.add(fxn, "upsample", [x], path, attrs=dict(scale=scale, mode=m.mode))
        elif isinstance(m, nn.AdaptiveAvgPool2d) and _is_one(m.output_size):
            self.add(fxn, "global_pool", [x], path)
        elif isinstance(m, nn.AvgPool2d) and not m.ceil_mode and m.divisor_override is None:
            k = _pair(m.kernel_size)
            self.add(
                fxn,
                "avg_pool",
                [x],
                path,
                attrs=dict(
                    kernel_size=k,
                    stride=_pair(m.stride or k),
                    padding=_pair(m.padding),
                    count_include_pad=bool(m.count_include_pad),
                ),
            )
        elif isinstance(m, nn.MaxPool2d) and _pair(m.dilation) == (1, 1) and not m.return_indices:
            k = _pair(m.kernel_size)
            self.add(
                fxn,
                "max_pool",
                [x],
                path,
                attrs=dict(
                    kernel_size=k, stride=_pair(m.stride or k), padding=_pair(m.padding), ceil_mode=bool(m.ceil_mode)
                ),
            )
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            self.add(fxn, "flatten", [x], path)
        elif isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)) and m.value == 0 and _zero_pad_4d(fxn, m.padding):
            self.add(fxn, "pad", [x], path, attrs=dict(padding=_zero_pad_4d(fxn, m.padding)))
        elif isinstance(m, _PASSTHROUGH_MODULES):
            self.passthrough(fxn, x)
        else:
            self.float_op(fxn, type(m).__name__, path)

    def conv_same_padding(self, fxn, m, x, path):
        if m.padding == "valid":
            pad = (0, 0)
        else:  # "same" (stride 1): torch puts the odd pixel of an even extent at the bottom / right
            ext = [d * (k - 1) for d, k in zip(_pair(m.dilation), _pair(m.kernel_size))]
            pad = (ext[0] // 2, ext[1] // 2)
            if any(e % 2 for e in ext):
                pad = (ext[0] // 2, ext[0] - ext[0] // 2, ext[1] // 2, ext[1] - ext[1] // 2)
        w = m.weight.detach().float().clone()
        b = m.bias.detach().float().clone() if m.bias is not None else torch.zeros(w.shape[0])
        self.add(
            fxn,
            "conv",
            [x],
            path,
            weight=w,
            bias=b,
            attrs=dict(stride=_pair(m.stride), padding=pad, dilation=_pair(m.dilation), groups=int(m.groups)),
        )

    def visit_function(self, fxn):
        t = fxn.target
        fname = getattr(t, "__name__", str(t))
        name = _where(fxn, fname)
        args = fxn.args
        if (
            t in _ADD_FUNCTIONS
            and len(args) == 2
            and all(_is_fx(a) for a in args)
            and "alpha" not in fxn.kwargs
            and _shape(args[0]) == _shape(args[1])
        ):
            self.add(fxn, "add", list(args), name)
        elif t in _MUL_FUNCTIONS and len(args) == 2 and all(map(_is_fx, args)) and (order := _mul_order(args)):
            self.add(fxn, "mul", list(order), name)
        elif t is torch.cat and (values := _concat_inputs(fxn)) is not None:
            if len(values) == 1:  # torch.cat([x]) is x (DenseNet's first layer of a block)
                self.passthrough(fxn, values[0])
            else:
                self.add(fxn, "concat", values, name)
        elif t is torch.transpose and (shuffle := self._shuffle_of(fxn)) is not None:
            self.pattern_step(fxn, ("transposed", *shuffle), fname, name)
        elif t is operator.getitem and _is_fx(args[0]) and args[0].name in self.pending:
            self.visit_piece(fxn, name)
        elif t in (torch.chunk, torch.split) and (pieces := self._pieces(fxn)) is not None:
            self.pattern_step(fxn, ("pieces", args[0], pieces), fname, name)
        elif getattr(t, "__name__", "") == "stochastic_depth" and _arg(fxn, 3, "training", True) is False:
            self.passthrough(fxn, args[0])  # identity in evaluation (torchvision.ops.stochastic_depth)
        elif t is F.interpolate and (
            scale := _upsample_scale(fxn, _arg(fxn, 3, "mode", "nearest"), _arg(fxn, 4, "align_corners", None))
        ):
            self.add(fxn, "upsample", [args[0]], name, attrs=dict(scale=scale, mode=_arg(fxn, 3, "mode", "nearest")))
        elif (table := _lut_of_function(fxn)) is not None:
            self.add(fxn, "lut", [args[0]], name, attrs=dict(function=table[0], params=table[1]))
        elif t in (F.relu, torch.relu, torch.relu_):
            self.activation(fxn, args[0], "relu", name)
        elif t is F.relu6 or (
            t is F.hardtanh and _arg(fxn, 1, "min_val", -1.0) == 0.0 and _arg(fxn, 2, "max_val", 1.0) == 6.0
        ):
            self.activation(fxn, args[0], "relu6", name)
        elif (
            t in (torch.clamp, torch.clip)
            and _is_fx(args[0])
            and _arg(fxn, 1, "min", None) == 0
            and _arg(fxn, 2, "max", None) in (None, 6, 6.0)
        ):
            self.activation(fxn, args[0], "relu" if _arg(fxn, 2, "max", None) is None else "relu6", name)
        elif t is torch.flatten and _arg(fxn, 1, "start_dim", 0) == 1 and _arg(fxn, 2, "end_dim", -1) == -1:
            self.add(fxn, "flatten", [args[0]], name)
        elif t is F.adaptive_avg_pool2d and _is_one(_arg(fxn, 1, "output_size", None)):
            self.add(fxn, "global_pool", [args[0]], name)
        elif t in _PASSTHROUGH_FUNCTIONS:
            self.passthrough(fxn, args[0])
        elif (
            t is F.pad
            and _arg(fxn, 2, "mode", "constant") == "constant"
            and not _arg(fxn, 3, "value", None)
            and _zero_pad_4d(fxn, _arg(fxn, 1, "pad", None))
        ):
            self.add(fxn, "pad", [args[0]], name, attrs=dict(padding=_zero_pad_4d(fxn, _arg(fxn, 1, "pad", None))))
        elif t is torch.mean and self._is_spatial_mean(fxn):
            self.global_mean(fxn, name)
        elif (
            t is F.avg_pool2d
            and not _arg(fxn, 4, "ceil_mode", False)
            and _arg(fxn, 6, "divisor_override", None) is None
        ):
            k = _pair(_arg(fxn, 1, "kernel_size", None))
            s = _arg(fxn, 2, "stride", None)
            self.add(
                fxn,
                "avg_pool",
                [args[0]],
                name,
                attrs=dict(
                    kernel_size=k,
                    stride=_pair(s) if s else k,
                    padding=_pair(_arg(fxn, 3, "padding", 0)),
                    count_include_pad=bool(_arg(fxn, 5, "count_include_pad", True)),
                ),
            )
        elif (
            t is F.max_pool2d
            and _pair(_arg(fxn, 4, "dilation", 1)) == (1, 1)
            and not _arg(fxn, 6, "return_indices", False)
        ):
            k = _pair(_arg(fxn, 1, "kernel_size", None))
            s = _arg(fxn, 2, "stride", None)
            self.add(
                fxn,
                "max_pool",
                [args[0]],
                name,
                attrs=dict(
                    kernel_size=k,
                    stride=_pair(s) if s else k,
                    padding=_pair(_arg(fxn, 3, "padding", 0)),
                    ceil_mode=bool(_arg(fxn, 5, "ceil_mode", False)),
                ),
            )
        else:
            self.float_op(fxn, fname, name)

    def visit_method(self, fxn):
        m = fxn.target
        args = fxn.args
        where = _where(fxn, f".{m}")
        if (
            m in ("clamp", "clamp_", "clip", "clip_")
            and _arg(fxn, 1, "min", None) == 0
            and _arg(fxn, 2, "max", None) in (None, 6, 6.0)
        ):
            self.activation(fxn, args[0], "relu" if _arg(fxn, 2, "max", None) is None else "relu6", where)
        elif (
            m in ("add", "add_")
            and len(args) == 2
            and _is_fx(args[1])
            and _shape(args[0]) == _shape(args[1])
            and "alpha" not in fxn.kwargs
        ):
            self.add(fxn, "add", list(args), where)
        elif m in ("relu", "relu_"):
            self.activation(fxn, args[0], "relu", where)
        elif m in ("mul", "mul_") and len(args) == 2 and _is_fx(args[1]) and (order := _mul_order(args)):
            self.add(fxn, "mul", list(order), where)
        elif m in ("sigmoid", "sigmoid_", "tanh", "tanh_") and len(args) == 1:
            self.add(fxn, "lut", [args[0]], where, attrs=dict(function=m.rstrip("_"), params={}))
        elif m in ("view", "reshape") and (groups := self._split_channels(fxn)) is not None:
            self.pattern_step(fxn, ("grouped", args[0], groups), f".{m}()", where)
        elif m in ("view", "reshape") and _is_fx(args[0]) and (shuffle := self._shuffled(fxn)) is not None:
            self.add(fxn, "channel_shuffle", [shuffle[0]], where, attrs=dict(groups=shuffle[1]))
        elif m == "transpose" and (shuffle := self._shuffle_of(fxn)) is not None:
            self.pattern_step(fxn, ("transposed", *shuffle), f".{m}()", where)
        elif m in ("chunk", "split") and (pieces := self._pieces(fxn)) is not None:
            self.pattern_step(fxn, ("pieces", args[0], pieces), f".{m}()", where)
        elif m == "contiguous" and _is_fx(args[0]) and args[0].name in self.pending:
            self.pending[fxn.name] = self.pending[args[0].name]
            self.passthrough(fxn, args[0])
        elif m in ("view", "reshape", "flatten") and self._is_flatten(fxn):
            self.add(fxn, "flatten", [args[0]], where)
        elif m == "mean" and self._is_spatial_mean(fxn):
            self.global_mean(fxn, where)
        elif m in ("contiguous",):
            self.passthrough(fxn, args[0])
        else:
            self.float_op(fxn, f".{m}()", where)

    # -------------------------------------------------- channel shuffle and split (ShuffleNet)
    # x.view(N, g, C / g, H, W) -> transpose(1, 2) -> [contiguous] -> view(N, C, H, W) is a channel shuffle;
    # x.chunk(k, 1) / x.split(size, 1) followed by [i] are channel slices. Each step is recorded
    # (``pending``) and also emitted as a float op: the op that ends the pattern reads the pattern's source,
    # so a finished pattern leaves its steps without readers (pruned), and an unfinished one leaves float
    # ops, listed like any other.
    def pattern_step(self, fxn, info: tuple, op_name: str, path: str) -> None:
        """Record ``fxn`` as a step of a shuffle / split pattern, and emit it as a float op too."""
        self.pending[fxn.name] = info
        self.float_op(fxn, op_name, path)

    def _split_channels(self, fxn) -> int | None:
        """g when ``fxn`` views an (N, C, H, W) value as (N, g, C / g, H, W)."""
        ins, outs = _shape(fxn.args[0]), _shape(fxn)
        if ins is None or outs is None or len(ins) != 4 or len(outs) != 5:
            return None
        n, c, h, w = ins
        if outs[0] == n and outs[1] * outs[2] == c and outs[3:] == (h, w):
            return int(outs[1])
        return None

    def _shuffle_of(self, fxn):
        """(source, groups) when ``fxn`` transposes axes 1 and 2 of a pending (N, g, C / g, H, W) view."""
        src = fxn.args[0]
        dims = (_arg(fxn, 1, "dim0", None), _arg(fxn, 2, "dim1", None))
        info = self.pending.get(src.name) if _is_fx(src) else None
        if info is None or info[0] != "grouped" or sorted(d % 5 for d in dims if isinstance(d, int)) != [1, 2]:
            return None
        return info[1], info[2]

    def _shuffled(self, fxn):
        """(source, groups) when ``fxn`` views a pending transposed 5-D value back as (N, C, H, W)."""
        info = self.pending.get(fxn.args[0].name)
        if info is None or info[0] != "transposed":
            return None
        src, groups = info[1], info[2]
        return (src, groups) if _shape(fxn) == _shape(src) else None

    def _pieces(self, fxn):
        """[(begin, end), ...] of the channel pieces of a chunk / split of an (N, C, H, W) or (N, K) value."""
        src = fxn.args[0]
        shape = _shape(src) if _is_fx(src) else None
        dim = _arg(fxn, 2, "dim", 0)
        if shape is None or len(shape) not in (2, 4) or not isinstance(dim, int) or dim % len(shape) != 1:
            return None
        c = shape[1]
        how = _arg(fxn, 1, "chunks" if fxn.target in ("chunk", torch.chunk) else "split_size_or_sections", None)
        if fxn.target in ("chunk", torch.chunk):
            if not isinstance(how, int) or how < 1:
                return None
            size = -(-c // how)
            sizes = [min(size, c - b) for b in range(0, c, size)]
        elif isinstance(how, int) and how >= 1:
            sizes = [min(how, c - b) for b in range(0, c, how)]
        elif isinstance(how, (list, tuple)) and all(isinstance(v, int) and v >= 1 for v in how) and sum(how) == c:
            sizes = list(how)
        else:
            return None
        bounds, begin = [], 0
        for size in sizes:
            bounds.append((begin, begin + size))
            begin += size
        return bounds

    def visit_piece(self, fxn, name):
        info = self.pending[fxn.args[0].name]
        index = fxn.args[1]
        if info[0] != "pieces" or not isinstance(index, int) or not -len(info[2]) <= index < len(info[2]):
            self.float_op(fxn, "getitem", name)
            return
        begin, end = info[2][index]
        self.add(fxn, "slice", [info[1]], name, attrs=dict(begin=begin, end=end))

    def _is_flatten(self, fxn) -> bool:
        ins, outs = _shape(fxn.args[0]), _shape(fxn)
        if ins is None or outs is None or len(ins) < 2:
            return False
        if fxn.target == "flatten":
            return _arg(fxn, 1, "start_dim", 0) == 1 and _arg(fxn, 2, "end_dim", -1) == -1
        # view/reshape: accept only results equal to flatten(x, 1); the batch-2 shape pass rules out
        # hard-coded batch sizes
        return outs == (ins[0], math.prod(ins[1:]))

    def _is_spatial_mean(self, fxn) -> bool:
        ins = _shape(fxn.args[0])
        dims = _arg(fxn, 1, "dim", None)
        if ins is None or len(ins) != 4 or dims is None:
            return False
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        return sorted(d % 4 for d in dims) == [2, 3] and _arg(fxn, 3, "dtype", None) is None

    def global_mean(self, fxn, name):
        keep = bool(_arg(fxn, 2, "keepdim", False))
        node = self.add(fxn, "global_pool", [fxn.args[0]], name)
        if not keep:  # mean over H, W without keepdim = global pool + flatten
            pooled = node.name + "_pool"
            node.name = pooled
            self.nodes.append(Node(name=fxn.name, kind="flatten", inputs=[pooled], path=name, shape=_shape(fxn)))


def _zero_pad_4d(fxn, pad) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of a constant pad of the last two axes of a 4-D tensor (torch's
    ``(left, right[, top, bottom])`` order), or None when it is something else (negative, other axes)."""
    if isinstance(pad, int) and not isinstance(pad, bool):
        pad = (pad,) * 4
    if (
        not isinstance(pad, (tuple, list))
        or len(pad) not in (2, 4)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pad)
    ):
        return None
    shape = _shape(fxn.args[0]) if fxn.args and _is_fx(fxn.args[0]) else None
    if shape is None or len(shape) != 4:
        return None
    left, right = pad[0], pad[1]
    top, bottom = (pad[2], pad[3]) if len(pad) == 4 else (0, 0)
    return int(top), int(bottom), int(left), int(right)


def _fetch_attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------- rewrites


def _fold_batch_norms(nodes: list[Node]) -> list[Node]:
    by_name = {n.name: n for n in nodes}
    users: dict[str, int] = {}
    for n in nodes:
        for i in set(n.inputs):
            users[i] = users.get(i, 0) + 1
    out, rename = [], {}
    for n in nodes:
        n.inputs = [rename.get(i, i) for i in n.inputs]
        if n.kind == "float_op":
            n.args = _rename_refs(n.args, rename)
            n.kwargs = _rename_refs(n.kwargs, rename)
        if n.kind != "bn":
            out.append(n)
            continue
        bn: nn.modules.batchnorm._BatchNorm = n.attrs["module"]
        prev = by_name.get(n.inputs[0])
        var = bn.running_var.detach().double()
        if torch.any(var < 0) or not torch.all(torch.isfinite(var)):
            raise ValueError(f"batch norm '{n.path}' has negative or non-finite running_var; cannot fold it")
        inv_std = 1.0 / torch.sqrt(var + bn.eps)
        gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(var)
        beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(var)
        mean = bn.running_mean.detach().double()
        fold = gamma * inv_std
        if (
            prev is not None
            and prev.is_layer
            and prev.act is None
            and users.get(prev.name, 0) == 1
            and prev.weight.shape[0] == fold.numel()
        ):
            shape = (-1,) + (1,) * (prev.weight.dim() - 1)
            prev.weight = (prev.weight.double() * fold.reshape(shape)).float()
            prev.bias = ((prev.bias.double() - mean) * fold + beta).float()
            prev.bn = (beta.float(), gamma.abs().float())
            prev.path = f"{prev.path}+{n.path}"
            rename[n.name] = prev.name
        elif isinstance(bn, nn.BatchNorm2d):
            # a batch norm on its own is a per-channel affine map: a depthwise 1x1 convolution
            c = fold.numel()
            n.kind = "conv"
            n.weight = fold.float().reshape(c, 1, 1, 1)
            n.bias = (beta - mean * fold).float()
            n.attrs = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=c)
            n.bn = (beta.float(), gamma.abs().float())
            out.append(n)
        else:
            n.kind = "float_op"
            n.op_name = type(bn).__name__
            n.args = (_Ref(n.inputs[0]),)
            n.target = bn
            out.append(n)
    return out


def _fold_pads(nodes: list[Node]) -> list[Node]:
    """Fold a zero pad into the padding of the convolution it feeds, when that convolution is its only user
    and each side stays below the dilated kernel extent (the NPU's bound). Zero padding is real 0, which
    is what the convolution pads with, so the fold is exact. A pad left over is an NPU ``pad`` op."""
    users: dict[str, list[Node]] = {}
    for n in nodes:
        for i in set(n.inputs):
            users.setdefault(i, []).append(n)
    out, rename = [], {}
    for n in nodes:
        n.inputs = [rename.get(i, i) for i in n.inputs]
        if n.kind == "float_op":
            n.args = _rename_refs(n.args, rename)
            n.kwargs = _rename_refs(n.kwargs, rename)
        if n.kind != "pad":
            out.append(n)
            continue
        consumers = users.get(n.name, [])
        conv = consumers[0] if len(consumers) == 1 and consumers[0].kind == "conv" else None
        if conv is not None:
            kh, kw = conv.weight.shape[2], conv.weight.shape[3]
            dh, dw = conv.attrs["dilation"]
            ext = (dh * (kh - 1) + 1,) * 2 + (dw * (kw - 1) + 1,) * 2
            total = tuple(a + b for a, b in zip(n.attrs["padding"], conv_padding(conv.attrs)))
            if all(p < e for p, e in zip(total, ext)):
                conv.attrs["padding"] = total if total[0] != total[1] or total[2] != total[3] else (total[0], total[2])
                rename[n.name] = n.inputs[0]
                continue
        out.append(n)  # an NPU pad op: the input's zero point fills the new positions
    return out


def _fuse_activations(nodes: list[Node]) -> list[Node]:
    by_name = {n.name: n for n in nodes}
    users: dict[str, int] = {}
    for n in nodes:
        for i in set(n.inputs):
            users[i] = users.get(i, 0) + 1
    out, rename = [], {}
    for n in nodes:
        n.inputs = [rename.get(i, i) for i in n.inputs]
        if n.kind == "float_op":
            n.args = _rename_refs(n.args, rename)
            n.kwargs = _rename_refs(n.kwargs, rename)
        if n.kind != "act":
            out.append(n)
            continue
        prev = by_name.get(n.inputs[0])
        if (
            prev is not None
            and prev.kind in ("conv", "linear", "add")
            and users.get(prev.name, 0) == 1
            and (prev.act is None or (prev.act == "relu6" and n.act == "relu"))
        ):
            if prev.act is None:
                prev.act = n.act
            prev.path = f"{prev.path}+{n.path}"
            rename[n.name] = prev.name
        elif prev is not None and prev.kind in ("conv", "linear", "add") and prev.act == n.act:
            rename[n.name] = prev.name  # relu(relu(x)) with the inner one fused already
        else:  # nothing to fuse into: a table activation of its own
            n.kind = "lut"
            n.attrs = dict(function=n.act, params={})
            n.act = None
            out.append(n)
    return out


def _rename_refs(obj, rename):
    if isinstance(obj, _Ref):
        return _Ref(rename.get(obj.name, obj.name))
    if isinstance(obj, tuple):
        return tuple(_rename_refs(o, rename) for o in obj)
    if isinstance(obj, list):
        return [_rename_refs(o, rename) for o in obj]
    if isinstance(obj, dict):
        return {k: _rename_refs(v, rename) for k, v in obj.items()}
    return obj


def _prune(nodes: list[Node], output: str) -> list[Node]:
    live, by_name = {output}, {n.name: n for n in nodes}
    for n in reversed(nodes):
        if n.name in live:
            live.update(n.inputs)
    return [n for n in nodes if n.name in live or by_name[n.name].kind == "input"]


def _check_finite(nodes: list[Node]) -> None:
    for n in nodes:
        for label, t in (("weight", n.weight), ("bias", n.bias)):
            if t is not None and not torch.all(torch.isfinite(t)):
                bad = (~torch.isfinite(t)).nonzero()
                raise ValueError(
                    f"layer '{n.path}' has {bad.shape[0]} NaN/inf value(s) in its {label} after batch-norm folding "
                    f"(first at index {tuple(bad[0].tolist())}); fix the model before quantizing it"
                )


def fix_input_size(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Replace, in place, every module whose forward depends on the input's shape and that offers a
    ``static_for_input(input_shape)`` method (e.g. TensorFlow "SAME" padding computed from the input
    size) by its static equivalent for the shapes it sees on ``sample``. Returns notes for the graph."""
    dynamic = {name: m for name, m in model.named_modules() if name and callable(getattr(m, "static_for_input", None))}
    if not dynamic:
        return []
    seen: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, args):
            seen.setdefault(name, tuple(args[0].shape))  # returns None: the arguments stay as they are

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in dynamic.items()]
    try:
        with torch.no_grad():
            model(sample)
    except Exception as exc:
        raise ValueError(
            f"{type(model).__name__} does not run on an input of shape {tuple(sample.shape[1:])}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for h in hooks:
            h.remove()
    for name, m in dynamic.items():
        if name not in seen:
            continue  # not on the path of this input: left alone (tracing it would fail, as it should)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, m.static_for_input(seen[name]))
    size = "x".join(map(str, sample.shape[2:])) if sample.dim() == 4 else str(tuple(sample.shape[1:]))
    return [
        f"input size fixed at {size}: the shape-dependent padding of {len(seen)} module(s) "
        f"({', '.join(list(seen)[:3])}{', ...' if len(seen) > 3 else ''}) is static from here on; "
        f"the prepared graph runs on {size} inputs only"
    ]


def prepare(model: nn.Module, example_input: torch.Tensor) -> Graph:
    """Trace ``model`` and return its prepared :class:`Graph`.

    ``example_input`` is one batch (or one sample with its batch dimension) of the real input; it fixes
    the shapes. The model itself is not modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise TypeError("example_input must be a float torch tensor with a batch dimension, e.g. one calibration batch")
    if example_input.dim() < 2 or example_input.shape[0] < 1:
        raise ValueError(f"example_input must have a batch dimension, got shape {tuple(example_input.shape)}")
    model = copy.deepcopy(model).eval()
    notes = fix_input_size(model, example_input[:1].detach().float())
    gm = trace(model)
    name = type(model).__name__
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise UnsupportedOpsError(
            f"{name}: the NPU graph takes exactly one input; forward() takes {len(inputs)} ({', '.join(inputs)})"
        )
    # two samples, so that a reshape with a hard-coded batch size cannot pass for a flatten
    sample = example_input[:1].detach().float()
    try:
        ShapeProp(gm).propagate(torch.cat([sample, sample]))
    except Exception as exc:
        raise ValueError(
            f"{name} does not run on an input of shape {tuple(sample.shape[1:])} (batch 2): {type(exc).__name__}: {exc}"
        ) from exc
    builder = _Builder(gm, name)
    for fxn in gm.graph.nodes:
        builder.visit(fxn)
    nodes = _fold_pads(builder.nodes)
    nodes = _fold_batch_norms(nodes)
    nodes = _fuse_activations(nodes)
    nodes = _prune(nodes, builder.output_name)
    _check_finite(nodes)
    graph = Graph(nodes, builder.input_name, builder.output_name, builder.float_modules, tuple(sample.shape[1:]), name)
    folded = sum(1 for n in builder.nodes if n.kind == "pad") - sum(1 for n in nodes if n.kind == "pad")
    if folded:
        notes.append(f"{folded} zero pad(s) folded into the asymmetric padding of the convolution after each")
    graph.notes = notes
    return graph


__all__ = [
    "ACTIVATIONS",
    "Graph",
    "NPU_KINDS",
    "Node",
    "TraceError",
    "UnsupportedOpsError",
    "apply_activation",
    "conv_padding",
    "fix_input_size",
    "prepare",
    "run_float_node",
    "trace",
]
