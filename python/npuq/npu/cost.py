"""A first-order cost model of the NPU: MACs, parameter and activation memory, cycles and latency.

:func:`estimate_cost` walks a :class:`npuq.npu.Program` and counts, per op and in total, the work
(multiply-accumulates of conv / fully-connected layers, element operations of adds and pools), the
bytes of parameters it stores (weights packed at their bit width, bias, requantization parameters, with
the per-channel-multiplier equivalent next to WESS's 4-bit shifts), the activation bytes it reads and
writes, the peak activation memory of the whole program (liveness), and the cycles of a ``rows x cols``
MAC array and a ``cols``-lane vector unit fed by an off-chip memory of a given bandwidth.

The model and everything it leaves out are written down in ``docs/cost_model.md``. It is meant for
comparing layers, networks and quantization schemes with each other, not for predicting silicon to the
cycle.

What an op kind costs (the unit it runs on, its MACs or element operations, whether it is a view) is the
op table's (:mod:`npuq.npu.optable`: ``cost_unit``, ``mac_dims``, ``vector_ops``, ``view``); this module
turns those into bytes and cycles. Besides the table, only numpy and the standard library are imported
here (matplotlib only by :meth:`CostReport.plot`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from npuq.npu.optable import MAC_KINDS, OP_TABLE, VECTOR_KINDS  # noqa: F401 - MAC_KINDS, VECTOR_KINDS re-exported

if TYPE_CHECKING:  # pragma: no cover
    from npuq.npu.program import Op, Program

# Requantization parameter widths (bits). The multiplier is a Q31 mantissa; the exponent lies in
# [-31, 30] and is stored in a byte; WESS shifts are 4-bit (docs/quantization.md 2).
MULTIPLIER_BITS = 32
EXPONENT_BITS = 8
SHIFT_BITS = 4
BIAS_BITS = 32
ACTIVATION_BYTES = 1  # activations are int8


# ====================================================================================== configuration
@dataclass(frozen=True)
class NPUConfig:
    """The NPU the cost is estimated for.

    ``rows x cols`` MAC array (and a ``cols``-lane vector unit for adds and pools) clocked at
    ``clock_mhz``; off-chip memory of ``bandwidth_gbps`` GB/s (1 GB = 10^9 bytes); an on-chip activation
    buffer of ``buffer_bytes``; ``batch`` images run through each layer together (weights are fetched
    once per batch). Bad values raise ``ValueError`` naming the field.
    """

    rows: int = 16
    cols: int = 16
    clock_mhz: float = 500.0
    bandwidth_gbps: float = 4.0
    buffer_bytes: int = 256 * 1024
    batch: int = 1

    def __post_init__(self):
        for name, low in (("rows", 1), ("cols", 1), ("batch", 1), ("buffer_bytes", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
                raise ValueError(f"NPUConfig.{name} must be an integer >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("clock_mhz", "bandwidth_gbps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"NPUConfig.{name} must be a finite number > 0, got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def bytes_per_cycle(self) -> float:
        """Off-chip bytes moved per clock cycle: bandwidth / clock."""
        return self.bandwidth_gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def macs_per_cycle(self) -> int:
        return self.rows * self.cols


# ====================================================================================== results
@dataclass
class OpCost:
    """The cost of one op. Work and activation bytes are per image; traffic and cycles per batch.

    ``utilization``: the share of the op's cycles in which the unit it runs on (the MAC array for
    conv / fully-connected, the vector unit for adds and pools) does useful work; ``None`` for a flatten,
    which costs nothing.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    unit: str  # "mac_array", "vector" or "none"
    macs: int  # multiply-accumulates per image
    vector_ops: int  # element operations per image (adds, pool taps)
    weight_bytes: int  # weights packed at weight_bits
    weight_bits: int | None
    bias_bytes: int
    requant_scheme: str | None  # "per_layer" (one multiplier + 4-bit shifts, WESS) or "per_channel"
    requant_bytes: int  # as stored by this program
    per_channel_requant_bytes: int  # the same layer with a multiplier + exponent per output channel
    input_bytes: int  # activations read, per image
    output_bytes: int  # activation written, per image
    live_activation_bytes: int  # activations alive while the op runs, per image
    offchip_bytes: int  # bytes moved to or from off-chip memory, per batch
    compute_cycles: int
    memory_cycles: int
    cycles: int  # max(compute, memory): transfers overlap compute (double buffering)
    bound: str  # "compute", "memory" or "none"
    utilization: float | None
    # the emulator (golden reference) on the host, per image: its temporaries for this op (a max pool's
    # padded plane, a conv's im2col panel or depthwise row ring on one thread), and those plus the
    # activations alive: npuq.npu.program.op_footprint, what the loader bounds (docs/program.md 4)
    scratch_bytes: int = 0
    working_set_bytes: int = 0

    @property
    def param_bytes(self) -> int:
        return self.weight_bytes + self.bias_bytes + self.requant_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape)
        return d


@dataclass
class CostReport:
    """Per-op costs of a program on one :class:`NPUConfig`, with totals (see ``docs/cost_model.md``)."""

    model: str
    config: NPUConfig
    ops: list[OpCost]
    peak_activation_bytes: int  # per image
    peak_op: str
    activations_on_chip: bool  # peak * batch fits the on-chip buffer
    notes: list[str] = field(default_factory=list)
    peak_working_set_bytes: int = 0  # per image, the emulator's: the largest OpCost.working_set_bytes
    peak_working_set_op: str = ""

    # ---------------------------------------------------------------------------- totals
    def _sum(self, key: str) -> int:
        return int(sum(getattr(o, key) for o in self.ops))

    @property
    def macs(self) -> int:
        return self._sum("macs")

    @property
    def vector_ops(self) -> int:
        return self._sum("vector_ops")

    @property
    def weight_bytes(self) -> int:
        return self._sum("weight_bytes")

    @property
    def bias_bytes(self) -> int:
        return self._sum("bias_bytes")

    @property
    def requant_bytes(self) -> int:
        return self._sum("requant_bytes")

    @property
    def per_channel_requant_bytes(self) -> int:
        return self._sum("per_channel_requant_bytes")

    @property
    def param_bytes(self) -> int:
        return self.weight_bytes + self.bias_bytes + self.requant_bytes

    @property
    def offchip_bytes(self) -> int:
        return self._sum("offchip_bytes")

    @property
    def compute_cycles(self) -> int:
        return self._sum("compute_cycles")

    @property
    def memory_cycles(self) -> int:
        return self._sum("memory_cycles")

    @property
    def cycles(self) -> int:
        """Cycles of one batch: the ops run one after the other."""
        return self._sum("cycles")

    @property
    def latency_ms(self) -> float:
        """Time of one batch."""
        return self.cycles / (self.config.clock_mhz * 1e3)

    @property
    def images_per_s(self) -> float | None:
        """Throughput; ``None`` for a program that takes no cycles (only flattens)."""
        return self.config.batch / (self.latency_ms / 1e3) if self.cycles else None

    @property
    def utilization(self) -> float:
        """MAC array utilization over the whole program (all ops' cycles count)."""
        if not self.cycles:
            return 0.0
        return self.macs * self.config.batch / (self.cycles * self.config.macs_per_cycle)

    def totals(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "macs": self.macs,
            "vector_ops": self.vector_ops,
            "weight_bytes": self.weight_bytes,
            "bias_bytes": self.bias_bytes,
            "requant_bytes": self.requant_bytes,
            "per_channel_requant_bytes": self.per_channel_requant_bytes,
            "param_bytes": self.param_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "peak_activation_bytes_batch": self.peak_activation_bytes * cfg.batch,
            "peak_op": self.peak_op,
            "activations_on_chip": self.activations_on_chip,
            "peak_working_set_bytes": self.peak_working_set_bytes,
            "peak_working_set_op": self.peak_working_set_op,
            "offchip_bytes": self.offchip_bytes,
            "compute_cycles": self.compute_cycles,
            "memory_cycles": self.memory_cycles,
            "cycles": self.cycles,
            "compute_bound_ops": sum(o.bound == "compute" for o in self.ops),
            "memory_bound_ops": sum(o.bound == "memory" for o in self.ops),
            "utilization": self.utilization,
            "latency_ms": self.latency_ms,
            "images_per_s": self.images_per_s,
        }

    # ---------------------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "config": asdict(self.config),
            "units": _UNITS,
            "ops": [o.to_dict() for o in self.ops],
            "totals": self.totals(),
            "notes": list(self.notes),
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def to_table(self) -> str:
        return _format_table(self)

    def plot(self, path: str | os.PathLike) -> Path:
        """Bar chart of the cycles of each op: compute, with the memory stall beyond it stacked on top."""
        return _plot(self, Path(path))

    def __str__(self) -> str:
        return self.to_table()


_UNITS = {
    "macs": "per image",
    "vector_ops": "per image",
    "activation bytes": "per image",
    "parameter bytes": "per program",
    "offchip_bytes": "per batch",
    "cycles": "per batch",
    "latency_ms": "per batch",
}


# ====================================================================================== estimation
def estimate_cost(program: Program, config: NPUConfig | None = None) -> CostReport:
    """Estimate the cost of running ``program`` on the NPU described by ``config`` (default:
    :class:`NPUConfig()`). The program is validated first (``ProgramError`` if it is malformed)."""
    from npuq.npu.program import Program

    if not isinstance(program, Program):
        raise TypeError(f"estimate_cost takes an npuq Program, got {type(program).__name__}")
    if config is None:
        config = NPUConfig()
    if not isinstance(config, NPUConfig):
        raise TypeError(f"config must be an NPUConfig, got {type(config).__name__}")
    from npuq.npu.program import memory_plan

    shapes = program.shapes()  # validates
    plan = memory_plan(program, shapes)
    live = plan.live
    peak_index = int(np.argmax(live))
    peak, peak_op = live[peak_index], program.ops[peak_index].name
    on_chip = peak * config.batch <= config.buffer_bytes
    offchip_acts = _offchip_activation_bytes(program, shapes, on_chip)
    ops = []
    for i, op in enumerate(program.ops):
        cost = _op_cost(op, [shapes[s] for s in op.inputs], shapes[op.name], live[i], offchip_acts[i], config)
        f = plan.footprints[i]
        cost.scratch_bytes = f.intermediate_bytes + f.scratch_bytes
        cost.working_set_bytes = plan.working_sets[i]
        ops.append(cost)
    notes = []
    if not on_chip:
        notes.append(
            f"peak activations x batch ({peak * config.batch} bytes) exceed the on-chip buffer "
            f"({config.buffer_bytes} bytes): every op reads its inputs from and writes its output to "
            f"off-chip memory"
        )
    return CostReport(
        model=program.model,
        config=config,
        ops=ops,
        peak_activation_bytes=peak,
        peak_op=peak_op,
        activations_on_chip=on_chip,
        notes=notes,
        peak_working_set_bytes=plan.peak_bytes,
        peak_working_set_op=program.ops[plan.peak_index].name,
    )


def _elements(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


def _storage_of(program: Program) -> dict[str, str]:
    """Value name -> the name of the buffer holding it. A view (a flatten) is a reshape: its output shares
    its input's buffer, so it is neither stored twice nor moved."""
    storage = {program.input.name: program.input.name}
    for op in program.ops:
        storage[op.name] = storage[op.inputs[0]] if OP_TABLE[op.kind].view else op.name
    return storage


def activation_liveness(
    program: Program, shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[list[int], int, str]:
    """Per-image activation bytes alive while each op runs, the peak, and the op where it happens.

    Alive at op ``i``: every buffer written before (or by) op ``i`` that op ``i`` or a later op still
    reads; the program output stays alive to the end. The first op reaching the peak is reported.
    One pass over the ops (:func:`npuq.npu.program.live_activation_bytes`), linear in their number.
    """
    from npuq.npu.program import live_activation_bytes

    shapes = program.shapes() if shapes is None else shapes
    live = [b * ACTIVATION_BYTES for b in live_activation_bytes(program, shapes)]
    peak_index = int(np.argmax(live))
    return live, live[peak_index], program.ops[peak_index].name


def _offchip_activation_bytes(program: Program, shapes, on_chip: bool) -> list[int]:
    """Per-image activation bytes each op moves to or from off-chip memory.

    Activations off chip: each op reads its inputs and writes its output (a view, a flatten, moves
    nothing). On chip: only the network input (read by the first op other than a view that needs it) and
    the network output (written by the op that produces its buffer) cross the chip boundary.
    """
    storage = _storage_of(program)
    if not on_chip:
        return [
            0
            if OP_TABLE[op.kind].view
            else sum(_elements(shapes[s]) for s in op.inputs) * ACTIVATION_BYTES
            + _elements(shapes[op.name]) * ACTIVATION_BYTES
            for op in program.ops
        ]
    moved = [0] * len(program.ops)
    input_read = False
    result = storage[program.output]
    for i, op in enumerate(program.ops):
        reads_input = not OP_TABLE[op.kind].view and any(storage[s] == program.input.name for s in op.inputs)
        if reads_input and not input_read:
            moved[i] += _elements(shapes[program.input.name]) * ACTIVATION_BYTES
            input_read = True
        if op.name == result:
            moved[i] += _elements(shapes[op.name]) * ACTIVATION_BYTES
    return moved


def _requant_bytes(op: Op) -> tuple[str, int, int]:
    """(scheme, bytes as stored, bytes with per-channel multipliers) of a conv / fully-connected layer.

    Per layer (WESS): one multiplier and one exponent, and a 4-bit shift per output channel (all zero
    without WESS; the format stores them anyway). Per channel: a multiplier and an exponent per output
    channel; shifts are not needed (they fold into the per-channel exponents).
    """
    c_out = int(op.tensors["weight"].shape[0])
    per_channel = c_out * (MULTIPLIER_BITS + EXPONENT_BITS) // 8
    if op.tensors["multiplier"].shape[0] == c_out and c_out > 1:
        return "per_channel", per_channel, per_channel
    per_layer = (MULTIPLIER_BITS + EXPONENT_BITS) // 8 + math.ceil(c_out * SHIFT_BITS / 8)
    return "per_layer", per_layer, per_channel


def _layer_dims(op: Op, out_shape) -> tuple[int, int, int]:
    """(output channels, reduction length of one output, output pixels per image) of a MAC layer: the op
    table's ``mac_dims``. The reduction is KH * KW * C_in / groups for a conv (the weight's OHWI shape
    already holds C_in / groups), K for a fully-connected layer."""
    return OP_TABLE[op.kind].mac_dims(op, out_shape)


def _mac_cycles(op: Op, out_shape, config: NPUConfig) -> int:
    """Cycles of one image on the MAC array.

    Columns take output channels, rows the reduction of one output; each output pixel is one pass of
    every (column tile, row tile) pair. A grouped conv keeps its output channels side by side on the
    columns, each column reading its own group's inputs, so a depthwise conv fills the rows with only
    its KH * KW taps.
    """
    c_out, reduction, pixels = _layer_dims(op, out_shape)
    return math.ceil(c_out / config.cols) * math.ceil(reduction / config.rows) * pixels


def _vector_ops(op: Op, in_shapes, out_shape) -> int:
    """Element operations per image of a vector-unit op, the op table's ``vector_ops``: one per output
    element of an add; one per window tap of a pool (an add or a compare), one per input element of a
    global average. 0 for the other units."""
    spec = OP_TABLE[op.kind]
    return int(spec.vector_ops(op, in_shapes, out_shape)) if spec.vector_ops is not None else 0


def _op_cost(op: Op, in_shapes, out_shape, live_bytes: int, act_offchip: int, config: NPUConfig) -> OpCost:
    batch = config.batch
    macs = vector_ops = weight_bytes = bias_bytes = requant = per_channel = 0
    weight_bits = scheme = None
    unit = OP_TABLE[op.kind].cost_unit
    if unit == "mac_array":  # a layer: weights, bias and requantization parameters (OpSpec.layer)
        w = op.tensors["weight"]
        c_out, reduction, pixels = _layer_dims(op, out_shape)
        macs = c_out * reduction * pixels
        weight_bits = int(op.attrs["weight_bits"])
        weight_bytes = math.ceil(w.size * weight_bits / 8)
        bias_bytes = int(op.tensors["bias"].size) * BIAS_BITS // 8
        scheme, requant, per_channel = _requant_bytes(op)
        compute = batch * _mac_cycles(op, out_shape, config)
        work, lanes = macs, config.macs_per_cycle
    elif unit == "vector":
        vector_ops = _vector_ops(op, in_shapes, out_shape)
        weight_bytes = sum(int(t.nbytes) for t in op.tensors.values())  # a lut's table: read once per batch
        compute = math.ceil(batch * vector_ops / config.cols)
        work, lanes = vector_ops, config.cols
    else:  # "none": a view (flatten), a reshape of the buffer, no work
        compute, work, lanes = 0, 0, 1
    offchip = weight_bytes + bias_bytes + requant + batch * act_offchip
    memory = math.ceil(offchip / config.bytes_per_cycle)
    cycles = max(compute, memory)
    if cycles == 0:
        bound = "none"
    else:
        bound = "compute" if compute >= memory else "memory"
    utilization = batch * work / (cycles * lanes) if cycles and unit != "none" else None
    return OpCost(
        name=op.name,
        kind=op.kind,
        output_shape=tuple(int(d) for d in out_shape),
        unit=unit,
        macs=macs,
        vector_ops=vector_ops,
        weight_bytes=weight_bytes,
        weight_bits=weight_bits,
        bias_bytes=bias_bytes,
        requant_scheme=scheme,
        requant_bytes=requant,
        per_channel_requant_bytes=per_channel,
        input_bytes=sum(_elements(s) for s in in_shapes) * ACTIVATION_BYTES,
        output_bytes=_elements(out_shape) * ACTIVATION_BYTES,
        live_activation_bytes=live_bytes,
        offchip_bytes=offchip,
        compute_cycles=compute,
        memory_cycles=memory,
        cycles=cycles,
        bound=bound,
        utilization=utilization,
    )


# ====================================================================================== table and plot
def _n(v: int) -> str:
    return f"{v:,}"


def _format_table(report: CostReport) -> str:
    cfg = report.config
    header = ("op", "kind", "output", "MACs", "weight B", "requant B", "act in+out B", "cycles", "bound", "util")
    rows = []
    for o in report.ops:
        rows.append(
            (
                o.name,
                o.kind,
                "x".join(map(str, o.output_shape)),
                _n(o.macs) if o.unit == "mac_array" else (f"{_n(o.vector_ops)} el" if o.vector_ops else "-"),
                _n(o.weight_bytes) if o.unit == "mac_array" else "-",
                _n(o.requant_bytes) if o.unit == "mac_array" else "-",
                _n(o.input_bytes + o.output_bytes),
                _n(o.cycles),
                o.bound,
                "-" if o.utilization is None else f"{100 * o.utilization:.1f}%",
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    left = {0, 1, 2, 8}

    def line(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    t = report.totals()
    n_wess = sum(o.requant_scheme == "per_layer" for o in report.ops)
    n_pc = sum(o.requant_scheme == "per_channel" for o in report.ops)
    ratio = f"{t['per_channel_requant_bytes'] / t['requant_bytes']:.2f}x" if t["requant_bytes"] else "-"
    out = [
        f"NPU cost of '{report.model}': {cfg.rows}x{cfg.cols} MAC array at {cfg.clock_mhz:g} MHz, "
        f"{cfg.bandwidth_gbps:g} GB/s off-chip ({cfg.bytes_per_cycle:.3g} B/cycle), "
        f"{_n(cfg.buffer_bytes)} B on-chip buffer, batch {cfg.batch}",
        "(MACs, element ops and activation bytes per image; cycles per batch)",
        "",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
        "",
        f"MACs per image            {_n(t['macs'])} (+ {_n(t['vector_ops'])} element ops on the vector unit)",
        f"weights                   {_n(t['weight_bytes'])} B, bias {_n(t['bias_bytes'])} B",
        f"requantization params     {_n(t['requant_bytes'])} B as stored ({n_wess} per-layer WESS layers, "
        f"{n_pc} per-channel layers); with per-channel multipliers {_n(t['per_channel_requant_bytes'])} B "
        f"({ratio})",
        f"peak activation memory    {_n(t['peak_activation_bytes'])} B per image at '{t['peak_op']}' "
        f"({_n(t['peak_activation_bytes_batch'])} B for the batch: "
        f"{'fits on chip' if t['activations_on_chip'] else 'spills to off-chip memory'})",
        f"emulator working set      {_n(t['peak_working_set_bytes'])} B per image at "
        f"'{t['peak_working_set_op']}' (values alive and the op's temporaries on the host; the loader's limit "
        f"is 1 GiB)",
        f"off-chip traffic          {_n(t['offchip_bytes'])} B per batch",
        f"cycles                    {_n(t['cycles'])} per batch (compute {_n(t['compute_cycles'])}, memory "
        f"{_n(t['memory_cycles'])}; {t['compute_bound_ops']} ops compute-bound, {t['memory_bound_ops']} "
        f"memory-bound), MAC utilization {100 * t['utilization']:.1f}%",
        f"latency                   {t['latency_ms']:.4g} ms per batch of {cfg.batch}, "
        f"{'-' if t['images_per_s'] is None else format(t['images_per_s'], ',.0f')} images/s",
    ]
    out += [f"note: {n}" for n in report.notes]
    return "\n".join(out)


def _plot(report: CostReport, path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("CostReport.plot needs matplotlib (pip install matplotlib)") from exc
    ops = [o for o in report.ops if o.cycles]
    x = np.arange(len(ops))
    compute = np.array([o.compute_cycles for o in ops])
    stall = np.array([max(0, o.memory_cycles - o.compute_cycles) for o in ops])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(ops) + 2), 4.5))
    ax.bar(x, compute, label="compute")
    ax.bar(x, stall, bottom=compute, label="memory beyond compute")
    ax.set_xticks(x, [o.name for o in ops], rotation=90, fontsize=7)
    ax.set_ylabel(f"cycles per batch of {report.config.batch}")
    cfg = report.config
    ax.set_title(
        f"{report.model}: {cfg.rows}x{cfg.cols} MACs, {cfg.clock_mhz:g} MHz, {cfg.bandwidth_gbps:g} GB/s "
        f"- {report.latency_ms:.3g} ms"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ====================================================================================== command line
def add_commands(sub) -> None:
    """Register ``npuq cost PROGRAM [options]`` on the argparse sub-parsers ``sub``."""
    from npuq._cliutil import float_range, int_range

    defaults = NPUConfig()
    p = sub.add_parser("cost", help="estimate MACs, memory, cycles and latency of an NPU program (docs/cost_model.md)")
    p.add_argument("program", help="a program file (.npuq) written by `npuq compile` or Program.save")
    p.add_argument("--rows", type=int_range(1, 1 << 16), default=defaults.rows, help="MAC array rows (reduction)")
    p.add_argument(
        "--cols",
        type=int_range(1, 1 << 16),
        default=defaults.cols,
        help="MAC array columns (output channels) and vector lanes",
    )
    p.add_argument("--clock-mhz", type=float_range(0, 1e6, lo_open=True), default=defaults.clock_mhz, help="NPU clock")
    p.add_argument(
        "--bandwidth-gbps",
        type=float_range(0, 1e6, lo_open=True),
        default=defaults.bandwidth_gbps,
        help="off-chip GB/s",
    )
    p.add_argument(
        "--buffer-bytes", type=int_range(0, 1 << 40), default=defaults.buffer_bytes, help="on-chip activation buffer"
    )
    p.add_argument("--batch", type=int_range(1, 1 << 20), default=defaults.batch, help="images per inference")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="also plot cycles per op (needs matplotlib)")
    p.set_defaults(func=_run_cost)


def _run_cost(args) -> int:
    from npuq.npu.program import ProgramError, load_program

    try:
        config = NPUConfig(
            rows=args.rows,
            cols=args.cols,
            clock_mhz=args.clock_mhz,
            bandwidth_gbps=args.bandwidth_gbps,
            buffer_bytes=args.buffer_bytes,
            batch=args.batch,
        )
        program = load_program(args.program)
    except ValueError as exc:  # ProgramError is a ValueError
        kind = "program" if isinstance(exc, ProgramError) else "configuration"
        print(f"npuq cost: bad {kind}: {exc}", file=sys.stderr)
        return 2
    report = estimate_cost(program, config)
    print(report.to_table())
    if args.json:
        print(f"wrote {report.save_json(args.json)}")
    if args.plot:
        try:
            print(f"wrote {report.plot(args.plot)}")
        except ImportError as exc:
            print(f"npuq cost: {exc}", file=sys.stderr)
            return 1
    return 0


__all__ = ["CostReport", "NPUConfig", "OpCost", "activation_liveness", "add_commands", "estimate_cost"]
