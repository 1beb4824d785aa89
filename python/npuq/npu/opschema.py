"""The op table's schema: what one entry of :data:`npuq.npu.optable.OP_TABLE` holds (docs/program.md 7).

:class:`OpSpec` (one op kind), :class:`Attr` and :class:`Tensor` (what the loader checks),
:class:`OpFootprint` (memory and work of one op) and :class:`RunContext` (what a run function gets).
Imports numpy and the field checks of :mod:`npuq.npu._checks` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from npuq.npu._checks import INT32_MAX, elements, fail, int_field, int_list

if TYPE_CHECKING:  # pragma: no cover
    from npuq.npu.program import Op

Shape = tuple[int, ...]

COST_UNITS = ("mac_array", "vector", "none")
MAX_VARIADIC_INPUTS = 64  # inputs of a variadic kind (concat)


# ====================================================================================== the schema
@dataclass(frozen=True)
class Attr:
    """One attribute of an op kind, as the loader checks it.

    ``type``: ``"int"`` (an integer in ``[lo, hi]``), ``"ints"`` (a list of ``length`` integers in
    ``[lo, hi]``; ``length`` 0: one per input of the op), ``"q31s"`` (a list of Q31 mantissas, one per
    input), ``"q31"`` (a Q31 mantissa: 0 or in ``[2^30, 2^31 - 1]``), ``"bool"``, ``"choice"`` (one of
    the strings ``choices``) or ``"floats"`` (a non-empty list of finite reals > 0; the kind's ``infer``
    checks its length). Every attribute is required in the format versions from ``since`` on; a
    program of an older version must not have it, and consumers read ``default`` for it
    (:func:`attr_value`). An ``optional`` attribute may be left out in any version (its absence means
    ``default``): it selects a variant that programs without it never use, and a reader that predates it
    refuses a program that has it (an unknown attribute) rather than computing something else."""

    type: str
    lo: int = 0
    hi: int = 0
    length: int = 0
    choices: tuple[str, ...] = ()
    since: int = 1
    default: Any = None
    optional: bool = False

    def __post_init__(self):
        if self.type not in ("int", "ints", "q31", "q31s", "bool", "choice", "floats"):
            raise ValueError(f"unknown attribute type {self.type!r}")
        if (self.type == "choice") != bool(self.choices):
            raise ValueError("a choice attribute lists its choices (and only it does)")
        if (self.since > 1 or self.optional) and self.default is None:
            raise ValueError("an attribute added after format 1, or optional, has a default")

    def check(self, attrs: dict, key: str, where: str, n_inputs: int = 1):
        """The value of ``attrs[key]``, or a ProgramError naming ``where`` and the attribute."""
        if self.optional and key not in attrs:
            return self.default
        if self.type == "floats":
            return _float_list(attrs[key], key, where)
        if self.type == "int":
            return int_field(attrs, key, where, self.lo, self.hi)
        if self.type == "ints":
            return int_list(attrs, key, where, self.length or n_inputs, self.lo, self.hi)
        if self.type == "q31s":
            values = int_list(attrs, key, where, n_inputs, 0, INT32_MAX)
            for i, m in enumerate(values):
                if m and m < 2**30:
                    fail(where, f"attribute '{key}'[{i}] = {m} is not a Q31 mantissa (0 or in [2^30, 2^31-1])")
            return values
        if self.type == "q31":
            m = int_field(attrs, key, where, 0, INT32_MAX)
            if m and m < 2**30:
                fail(where, f"attribute '{key}' = {m} is not a Q31 mantissa (0 or in [2^30, 2^31-1])")
            return m
        if key not in attrs:
            fail(where, f"missing attribute '{key}'")
        v = attrs[key]
        if self.type == "choice":
            if not isinstance(v, str) or v not in self.choices:
                fail(where, f"attribute '{key}' must be one of {list(self.choices)}, got {v!r:.80}")
            return v
        if not isinstance(v, bool):
            fail(where, f"attribute '{key}' must be true or false, got {v!r}")
        return v


def _float_list(v, key: str, where: str) -> tuple[float, ...]:
    if not isinstance(v, list) or not v:
        fail(where, f"attribute '{key}' must be a non-empty list of reals, got {v!r:.80}")
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not 0 < x < 2**30:
            fail(where, f"attribute '{key}'[{i}] = {x!r:.40} must be a finite real in (0, 2^30)")
    return tuple(float(x) for x in v)


@dataclass(frozen=True)
class Tensor:
    """One integer tensor of an op kind: its dtype and number of dimensions (the loader checks both; the
    kind's ``infer`` checks the sizes) and its layout in a golden vector set (docs/golden_vectors.md 1)."""

    dtype: type
    ndim: int
    layout: str

    def check(self, op: Op, key: str, where: str) -> np.ndarray:
        if key not in op.tensors:
            fail(where, f"missing tensor '{op.name}.{key}'")
        t = op.tensors[key]
        want = np.dtype(self.dtype)
        if not isinstance(t, np.ndarray):
            fail(where, f"tensor '{op.name}.{key}' must be a numpy array, got {type(t).__name__}")
        if t.dtype != want:
            fail(where, f"tensor '{op.name}.{key}' has dtype {t.dtype}, expected {want}")
        if t.ndim != self.ndim:
            fail(where, f"tensor '{op.name}.{key}' has shape {t.shape}, expected {self.ndim} dimension(s)")
        return t


@dataclass(frozen=True)
class OpFootprint:
    """What running one op takes, per image unless said otherwise (bytes; activations are int8).

    ``intermediate_bytes`` are per-image temporaries beyond the inputs and the output (the padded plane of
    a max pool); ``scratch_bytes`` is per thread of a native kernel and independent of the batch (the
    im2col panel of a GEMM conv, the row ring of a depthwise conv); ``param_bytes`` is per program (the
    layer's parameters as the native kernels pack them); ``work`` counts multiply-accumulates or element
    operations as the kernels run them (GEMM tiles padded to 16 channels and 4 taps)."""

    input_bytes: int
    output_bytes: int
    intermediate_bytes: int = 0
    scratch_bytes: int = 0
    param_bytes: int = 0
    work: int = 0
    temporary: str = ""  # what the temporaries are, for messages

    @property
    def working_set_bytes(self) -> int:
        """Everything the op touches for one image on one thread: bounded by MAX_OP_BYTES."""
        return self.input_bytes + self.output_bytes + self.intermediate_bytes + self.scratch_bytes


@dataclass(frozen=True)
class RunContext:
    """What a run function gets besides the op and its input values: the op's packed kernel (from
    :attr:`OpSpec.pack`, else None), the program's rounding and overflow policy, and the thread count
    (None: the default; always None on a GPU)."""

    kernel: Any
    rounding: str
    overflow: str
    threads: int | None = None


@dataclass(frozen=True, eq=False)
class OpSpec:
    """One op kind. Functions take the op (validated unless said otherwise) and per-image shapes."""

    name: str
    n_inputs: int
    attrs: Mapping[str, Attr]  # allowed = required attributes, checked in this order
    tensors: Mapping[str, Tensor]  # required tensors, in the order golden vector sets write them
    # (op, where, input shapes) -> output shape: the checks beyond the attributes' types and ranges and the
    # tensors' dtypes and ranks (done before it), raising ProgramError via npuq.npu._checks.fail
    infer: Callable[..., Shape]
    # (op, input shapes, output shape, bytes read, bytes written) -> OpFootprint
    footprint: Callable[..., OpFootprint]
    # (op, args, RunContext) -> output values: host numpy arrays; also device arrays unless run_cuda is set
    run: Callable[..., Any]
    cost_unit: str  # "mac_array", "vector" or "none" (docs/cost_model.md 2)
    docs: tuple[str, ...]  # "docs/<file>.md#<section anchor>" that define the kind
    run_cuda: Callable[..., Any] | None = None  # device arrays; None: run handles them
    # (op, rounding, overflow) -> the op's kernel, built once per program: a layer's packed weights, or the
    # checked parameters of a kind without weights (add); given to run and run_cuda as RunContext.kernel
    pack: Callable[..., Any] | None = None
    native: Callable[..., None] | None = None  # (op, where, input shape, output shape): the kernels' limits
    mac_dims: Callable[..., tuple[int, int, int]] | None = None  # mac_array: (C_out, reduction, pixels)
    vector_ops: Callable[..., int] | None = None  # vector: (op, input shapes, output shape) -> element ops
    view: bool = False  # the output is its input's buffer, reshaped: no work, no memory
    layer: bool = False  # a layer with weights (its tensors), packed once per program
    vector_inputs: tuple[str, ...] = ("input",)  # golden vector array names of its inputs (variadic: ())
    since: int = 1  # the program format version that introduced the kind

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise ValueError(f"op table entry '{self.name}': {what}")

        need(self.cost_unit in COST_UNITS, f"cost_unit {self.cost_unit!r} is not one of {COST_UNITS}")
        if self.n_inputs:
            need(len(self.vector_inputs) == self.n_inputs >= 1, "one golden vector input name per input")
        else:  # variadic: 2 to MAX_VARIADIC_INPUTS inputs, named input_0, input_1, ...
            need(not self.vector_inputs, "a variadic kind names its inputs input_<i>")
        need(not self.layer or (bool(self.tensors) and self.pack is not None), "a layer has tensors and a pack")
        need(self.pack is None or not self.view, "a view has nothing to pack")
        need((self.cost_unit == "mac_array") == (self.mac_dims is not None), "mac_dims iff the unit is mac_array")
        need((self.cost_unit == "vector") == (self.vector_ops is not None), "vector_ops iff the unit is vector")
        need(self.cost_unit != "mac_array" or self.layer, "a MAC-array op is a layer (weights, requantization)")
        need(
            not self.view or (self.cost_unit == "none" and self.n_inputs == 1 and not self.layer),
            "a view reads one value and costs nothing",
        )
        need(bool(self.docs) and all(d.startswith("docs/") and "#" in d for d in self.docs), "docs anchors")
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))

    @property
    def variadic(self) -> bool:
        return self.n_inputs == 0

    def input_names(self, n_inputs: int | None = None) -> tuple[str, ...]:
        """The golden vector array names of the inputs of an op of this kind with ``n_inputs`` inputs."""
        if not self.variadic:
            return self.vector_inputs
        if n_inputs is None:
            raise ValueError(f"{self.name} takes a variable number of inputs: say how many")
        return tuple(f"input_{i}" for i in range(n_inputs))

    def required_arrays_for(self, n_inputs: int | None = None) -> tuple[str, ...]:
        """The arrays of an op folder in a golden vector set, in order: inputs, tensors, output."""
        return self.input_names(n_inputs) + tuple(self.tensors) + ("output",)

    @property
    def required_arrays(self) -> tuple[str, ...]:
        return self.required_arrays_for()

    def check(self, op: Op, where: str, in_shapes: list[Shape], version: int | None = None) -> Shape:
        """Validate ``op`` (of this kind, its inputs defined with ``in_shapes``, in a program of format
        ``version``, default the newest): inputs, attributes, tensors, then the kind's own checks.
        Returns the output shape; raises ProgramError."""
        k, a = self.name, op.attrs
        if version is not None and version < self.since:
            fail(where, f"op kind {k!r} needs program format version {self.since} (the file says {version})")
        if self.variadic:
            if not 2 <= len(op.inputs) <= MAX_VARIADIC_INPUTS:
                fail(where, f"{k} takes 2 to {MAX_VARIADIC_INPUTS} inputs, got {len(op.inputs)}")
        elif len(op.inputs) != self.n_inputs:
            fail(where, f"{k} takes {self.n_inputs} input(s), got {len(op.inputs)}")
        if not isinstance(a, dict):
            fail(where, f"attrs must be an object, got {type(a).__name__}")
        allowed = {key for key, attr in self.attrs.items() if version is None or attr.since <= version}
        unknown = set(a) - allowed
        if unknown:
            fail(where, f"unknown attribute(s) {sorted(unknown)}; this op kind has {sorted(allowed)}")
        for key, attr in self.attrs.items():
            if key in allowed:
                attr.check(a, key, where, len(op.inputs))
        if "act_min" in self.attrs and "act_max" in self.attrs and a["act_min"] > a["act_max"]:
            fail(where, f"act_min ({a['act_min']}) > act_max ({a['act_max']})")  # the fused activation clamp
        if not self.tensors:
            if op.tensors:
                fail(where, f"{k} has no tensors, got {sorted(op.tensors)}")
        else:
            for key, tensor in self.tensors.items():
                tensor.check(op, key, where)
            extra = set(op.tensors) - set(self.tensors)
            if extra:
                fail(where, f"unknown tensor(s) {sorted(extra)}")
        return self.infer(op, where, in_shapes)

    def footprint_of(self, op: Op, in_shapes: list[Shape], out_shape: Shape) -> OpFootprint:
        reads = sum(elements(s) for s in dict(zip(op.inputs, in_shapes)).values())  # a value read twice: one buffer
        return self.footprint(op, in_shapes, out_shape, reads, elements(out_shape))
