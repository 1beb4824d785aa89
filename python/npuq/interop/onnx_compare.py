"""How far onnxruntime's execution of an exported program is from the bit-exact emulator, op by op.

The exported graph (:func:`npuq.interop.onnx_export.program_to_onnx`) names every op's int8 values after
the op; :func:`compare` makes them graph outputs, runs the model with onnxruntime at a graph optimization
level and the program with :class:`npuq.Emulator` on the same images, and reports for each op the largest
and the mean absolute difference in LSBs (int8 steps), the fraction of values that differ, and the top-1
agreement of the final outputs.

Exact equality is not expected: onnxruntime requantizes in float and rounds half to even, the NPU in fixed
point with TFLite's double rounding (docs/arithmetic.md 3), and with every optimization on it fuses the QDQ
groups into QLinearConv / QLinearAdd / ... kernels whose requantization is again a float multiply. A 1-LSB
difference in one op moves the next ops' inputs, so differences deep in a network include what earlier
ops passed on; the single-op programs of tests/interop/test_onnx_export.py bound one op on its own.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from npuq.interop.onnx_export import LOGITS, export_program, require_onnx, require_onnxruntime

LEVELS = ("disable_all", "enable_all")


def with_value_outputs(model, values: dict[str, tuple[float, int]]):
    """A copy of ``model`` that also outputs every int8 value of ``values`` (name -> its scale and zero
    point), dequantized: ``<name>/probe``. A DequantizeLinear is one more consumer of the value, which
    leaves onnxruntime's fusions as they are; making the int8 tensor itself a graph output would not (the
    fused kernels would no longer replace its QuantizeLinear). :func:`probe_int8` reads the int8 back."""
    onnx = require_onnx()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    props = {p.key: p.value for p in out.metadata_props}
    dtype = np.dtype(props.get("npuq.activations", "int8"))
    offset = 128 if dtype == np.uint8 else 0
    for name, (scale, zp) in values.items():
        if name == LOGITS:  # already real
            continue
        probe = f"{name}/probe"
        consts = [f"{probe}/scale", f"{probe}/zp"]
        g.initializer.append(onnx.numpy_helper.from_array(np.asarray(scale, np.float32), consts[0]))
        g.initializer.append(onnx.numpy_helper.from_array(np.asarray(zp + offset, dtype), consts[1]))
        g.node.append(onnx.helper.make_node("DequantizeLinear", [name, *consts], [probe], name=probe))
        g.output.append(onnx.helper.make_tensor_value_info(probe, onnx.TensorProto.FLOAT, None))
    return out


def probe_int8(real: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The int8 values behind a dequantized probe: ``(q - z) * s`` in float32 divided back is within 1e-6
    of the integer ``q - z``."""
    return (np.rint(real.astype(np.float64) / np.float64(np.float32(scale))) + zero_point).astype(np.int32)


def session(model, level: str, threads: int = 1, optimized_path: str | None = None):
    """An onnxruntime CPU session of ``model`` at ``level`` (``disable_all`` / ``enable_all``)."""
    ort = require_onnxruntime()
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if level == "enable_all"
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3  # errors only: not the note on saving an optimized model
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def fused_op_types(model, level: str) -> dict[str, int]:
    """The operator types of the graph onnxruntime runs after its optimizations at ``level``."""
    onnx = require_onnx()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        session(model, level, optimized_path=path)
        optimized = onnx.load(path)
    return dict(sorted(Counter(n.op_type for n in optimized.graph.node).items()))


def _nhwc(v: np.ndarray) -> np.ndarray:
    return v.transpose(0, 2, 3, 1) if v.ndim == 4 else v


def compare(
    program, images, *, activations: str = "int8", levels=LEVELS, batch_size: int = 32, threads: int = 1
) -> dict:
    """Run ``program`` with the emulator and its ONNX export with onnxruntime at each of ``levels``.

    ``images``: float images ``(N, C, H, W)`` (the float-input export; both sides quantize them, the emulator
    rounding ties away from zero, ONNX to even) or the program's int8 input ``(N, H, W, C)`` (the int8-input
    export). Returns ``{"images", "input_type", "levels": {level: {"ops": [...], "top1_agreement", ...}}}``;
    each op row has ``name``, ``kind``, ``max_lsb``, ``mean_lsb``, ``differ`` (fraction of values).
    """
    import npuq

    images = np.asarray(images)
    input_type = "int8" if images.dtype == np.int8 else "float"
    if input_type == "float":
        images = images.astype(np.float32)
    model, params = export_program(program, input_type=input_type, activations=activations)
    names = [program.input.name] + [op.name for op in program.ops]
    probe = with_value_outputs(model, {n: params[n] for n in names})
    emulator = npuq.Emulator(program, threads=threads)
    kinds = {op.name: op.kind for op in program.ops}
    kinds[program.input.name] = "input"
    result: dict = {"images": int(images.shape[0]), "input_type": input_type, "activations": activations, "levels": {}}
    for level in levels:
        sess = session(probe, level, threads=threads)
        out_names = [o.name for o in sess.get_outputs()]
        feed_name = sess.get_inputs()[0].name
        sums = {n: [0, 0.0, 0] for n in names}  # max, sum, values differing
        counts = dict.fromkeys(names, 0)
        agree = 0
        for lo in range(0, images.shape[0], batch_size):
            batch = images[lo : lo + batch_size]
            _, values = emulator.run(batch, capture=True)
            got = dict(zip(out_names, sess.run(None, {feed_name: batch})))
            got = {n: probe_int8(_nhwc(got[f"{n}/probe"]), *params[n]) for n in names}
            for n in names:
                d = np.abs(got[n] - values[n].astype(np.int32))
                s = sums[n]
                s[0] = max(s[0], int(d.max()))
                s[1] += float(d.sum())
                s[2] += int(np.count_nonzero(d))
                counts[n] += d.size
            ours = values[program.output].reshape(len(batch), -1).astype(np.int32)
            theirs = got[program.output].reshape(len(batch), -1).astype(np.int32)
            agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
        # the output of the model as shipped (no probes), so the fused kernels of this level compute it
        plain = session(model, level, threads=threads)
        plain_agree, plain_diff, ours_top1, plain_top1 = 0, [], [], []
        for lo in range(0, images.shape[0], batch_size):
            batch = images[lo : lo + batch_size]
            ours = emulator.run(batch).reshape(len(batch), -1).astype(np.int32)
            real = plain.run([LOGITS], {feed_name: batch})[0]
            theirs = probe_int8(_nhwc(real), *params[LOGITS]).reshape(len(batch), -1)
            plain_agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
            plain_diff.append(np.abs(ours - theirs))
            ours_top1 += ours.argmax(1).tolist()
            plain_top1 += theirs.argmax(1).tolist()
        result["emulator_top1"] = ours_top1
        plain_d = np.concatenate(plain_diff)
        rows = [
            dict(
                name=n,
                kind=kinds[n],
                max_lsb=sums[n][0],
                mean_lsb=sums[n][1] / counts[n],
                differ=sums[n][2] / counts[n],
            )
            for n in names
        ]
        op_rows = rows[1:]
        result["levels"][level] = dict(
            ops=rows,
            top1_agreement=agree / images.shape[0],
            max_lsb=max(r["max_lsb"] for r in op_rows),
            mean_lsb_of_ops=float(np.mean([r["mean_lsb"] for r in op_rows])),
            output=next(r for r in rows if r["name"] == program.output),
            unprobed=dict(
                top1_agreement=plain_agree / images.shape[0],
                output_max_lsb=int(plain_d.max()),
                output_mean_lsb=float(plain_d.mean()),
                top1=plain_top1,
            ),
            onnxruntime_ops=fused_op_types(model, level),
            onnxruntime_ops_probed=fused_op_types(probe, level),
        )
    return result


def isolated(program, images, *, activations: str = "int8", levels=LEVELS, limit: int = 64, threads: int = 1) -> dict:
    """Each single-input op on its own: the op as a program of one op, fed the emulator's own int8 values
    of its input (the first ``limit`` images), exported and run by onnxruntime, compared with the
    emulator's output of that op. This is the difference an op makes by itself, with nothing passed on
    from earlier ops. Two-input ops (add, mul, concat) are left out. Returns ``{level: [rows]}``."""
    import npuq
    from npuq.npu.program import InputSpec, Program

    _, values = npuq.Emulator(program, threads=threads).run(np.asarray(images)[:limit], capture=True)
    shapes = program.shapes()
    scales = {program.input.name: (program.input.scale, program.input.zero_point)}
    scales.update({op.name: (op.scale, op.zero_point) for op in program.ops})
    out: dict = {level: [] for level in levels}
    for op in program.ops:
        if len(op.inputs) != 1:
            continue
        src = op.inputs[0]
        one = Program(
            input=InputSpec(src, tuple(shapes[src]), float(np.float32(scales[src][0])), scales[src][1]),
            ops=[op],
            output=op.name,
            rounding=program.rounding,
            overflow=program.overflow,
            model=op.name,
        )
        model, params = export_program(one, input_type="int8", activations=activations)
        for level in levels:
            sess = session(model, level, threads=threads)
            real = sess.run([LOGITS], {sess.get_inputs()[0].name: values[src]})[0]
            d = np.abs(probe_int8(_nhwc(real), *params[LOGITS]) - values[op.name].astype(np.int32))
            out[level].append(
                dict(
                    name=op.name,
                    kind=op.kind,
                    max_lsb=int(d.max()),
                    mean_lsb=float(d.mean()),
                    differ=float(np.count_nonzero(d) / d.size),
                    fused=sorted(set(fused_op_types(model, level)) - {"DequantizeLinear", "QuantizeLinear"}),
                )
            )
    return out


def plot(result: dict, path, title: str = "") -> Path:
    """Per-op max and mean |LSB difference| of each optimization level, in program order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(result["levels"])
    fig, axes = plt.subplots(len(levels), 1, figsize=(10, 2.6 * len(levels)), sharex=True, squeeze=False)
    for ax, level in zip(axes[:, 0], levels):
        rows = result["levels"][level]["ops"]
        x = np.arange(len(rows))
        bars = ax.bar(x, [r["max_lsb"] for r in rows], color="#c8d7ea", label="max |diff| (left)")
        ax.set_ylabel("max |diff|, LSB")
        # the mean is two orders of magnitude below the max: its own axis
        right = ax.twinx()
        (line,) = right.plot(x, [r["mean_lsb"] for r in rows], "o-", ms=3, color="#b03a2e", label="mean |diff| (right)")
        right.set_ylabel("mean |diff|, LSB")
        right.set_ylim(bottom=0)
        agreement = result["levels"][level]["top1_agreement"]
        ax.set_title(f"onnxruntime {level} vs emulator (top-1 agreement {agreement:.1%})")
        ax.legend(handles=[bars, line], loc="upper right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("op (program order; 0 = input quantization)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "LEVELS",
    "LOGITS",
    "compare",
    "fused_op_types",
    "isolated",
    "plot",
    "probe_int8",
    "session",
    "with_value_outputs",
]
