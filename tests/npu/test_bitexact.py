"""The emulator is bit-exact: every intermediate value of a compiled program equals the independent numpy
interpreter (tests/support/npu_reference.py on tests/support/reference_numpy.py) and the quantization simulation
(``QuantizedModel.run_integer``), on the trained Fashion-MNIST MobileNets, torchvision's mobilenet_v2 at
224x224 and random small networks, for both rounding modes; and its results depend neither on the thread
count nor on the batching."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npuq
from npuq.models.zoo import randomize_batch_norms as _randomize_batch_norms
from npuq.npu import Emulator, InputSpec, Op, Program
from npuq.quant import intmath
from support import npu_reference as NR
from support.small_networks import SmallNet, conv_count, small_networks

ROUNDINGS = ("double", "single")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: see conftest.py


# ------------------------------------------------------------------------------------------- comparisons
def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    diff = np.argwhere(a != b)
    idx = tuple(int(i) for i in diff[0])
    return f"{len(diff)} of {a.size} values differ, first at {idx}: {int(a[idx])} vs {int(b[idx])}"


def assert_same_values(program: Program, got: dict, want: dict, what: str) -> int:
    """Every value (the input and each op's output) of ``got`` equals ``want`` exactly; returns how many."""
    names = [program.input.name] + [op.name for op in program.ops]
    assert sorted(got) == sorted(names), f"{what}: values {sorted(set(got) ^ set(names))} missing or extra"
    for name in names:
        g, w = got[name], want[name]
        assert g.shape == w.shape, f"{what}: '{name}' has shape {g.shape} vs {w.shape}"
        assert np.array_equal(g, w), f"{what}: '{name}': {_first_difference(g, w)}"
    return len(names)


def check_against_reference(program: Program, x, **run_kwargs) -> dict:
    """Run the emulator with capture and the numpy interpreter; assert every value equal; return them."""
    out, values = Emulator(program).run(x, capture=True, **run_kwargs)
    assert out.dtype == np.int8 and all(v.dtype == np.int8 for v in values.values())
    assert np.array_equal(out, values[program.output])
    ref = NR.run_program(program, x if not isinstance(x, torch.Tensor) else x.numpy())
    assert_same_values(program, values, ref, "emulator vs numpy reference")
    return values


def _sim_as_npu_layout(program: Program, name: str, t: torch.Tensor) -> np.ndarray:
    """A simulation value (int64, NCHW / (N, K)) in the program's layout (NHWC / (N, K), flatten in HWC)."""
    a = t.numpy()
    if a.ndim == 4:
        return a.transpose(0, 2, 3, 1)
    if name != program.input.name and program.op(name).kind == "flatten":
        src = program.op(name).inputs[0]
        shape = program.shapes()[src]
        if len(shape) == 3:  # torch flattens (C, H, W), the NPU (H, W, C)
            h, w, c = shape
            return a.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(a.shape[0], -1)
    return a


def check_against_simulation(qm, program: Program, values: dict, x: torch.Tensor) -> None:
    """The emulator's values equal the simulation's integers node by node (same names, same numbers)."""
    out, env = qm.run_integer(x, capture=True)
    for name, v in values.items():
        assert name in env, f"program value '{name}' is not a node of the quantized graph"
        sim = _sim_as_npu_layout(program, name, env[name])
        assert sim.shape == v.shape, f"'{name}': simulation shape {sim.shape} vs emulator {v.shape}"
        assert np.array_equal(sim, v), f"emulator vs simulation: '{name}': {_first_difference(v, sim)}"
    assert np.array_equal(out.numpy(), values[program.output])
    assert set(env) - set(values) <= {n.name for n in qm.graph if n.kind == "output"}


def assert_not_degenerate(values: dict, program: Program) -> None:
    for op in program.ops:
        if op.kind in ("conv2d", "fully_connected", "add"):
            assert len(np.unique(values[op.name])) > 2, f"'{op.name}' is (nearly) constant: a degenerate test"


# --------------------------------------------------------------------------------- Fashion-MNIST models
@functools.lru_cache(maxsize=None)
def _fmnist():
    from npuq.data.fashion_mnist import DatasetNotFoundError, fashion_mnist_loader

    try:
        calib = list(fashion_mnist_loader("train", batch_size=256, shuffle=True, seed=1234, limit=512))
        images, labels = next(iter(fashion_mnist_loader("test", batch_size=64, shuffle=False)))
    except DatasetNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST is not installed ({exc})")
    return calib, images, labels


@functools.lru_cache(maxsize=None)
def _fmnist_model(name: str):
    from npuq.models.checkpoints import list_checkpoints, load_checkpoint

    if name not in [c.removesuffix(".safetensors") for c in list_checkpoints()]:
        pytest.skip(f"checkpoint {name} is not shipped")
    model, _ = load_checkpoint(name)
    return model


@functools.lru_cache(maxsize=None)
def fmnist_program(name: str, weights: str, bits: int, rounding: str):
    calib, _, _ = _fmnist()
    qm = npuq.quantize(_fmnist_model(name), calib, weights=weights, bits=bits, activations="mse", rounding=rounding)
    return qm, npuq.compile(qm)


FMNIST_CASES = [
    ("mobilenet_v1_w0.5_sgd", "wess", 8, "double"),
    ("mobilenet_v1_w0.5_sgd", "wess", 8, "single"),
    ("mobilenet_v2_w0.5_sgd", "wess", 8, "double"),
    ("mobilenet_v2_w0.5_sgd", "wess", 8, "single"),
    ("mobilenet_v2_w0.5_sgd", "per_channel", 4, "double"),
    ("mobilenet_v2_w0.5_sgd", "wess", 4, "single"),
]
FMNIST_SLOW_CASES = [
    (m, w, b, r)
    for m in ("mobilenet_v1_w0.5_sgd", "mobilenet_v2_w0.5_sgd")
    for w in ("per_layer", "per_channel", "wess", "wess_mse")
    for b in (8, 4, 3)
    for r in ROUNDINGS
    if (m, w, b, r) not in FMNIST_CASES
]


def _check_fmnist(case):
    qm, prog = fmnist_program(*case)
    _, images, labels = _fmnist()
    assert prog.rounding == case[3] and prog.info["quantization"]["weights"] == case[1]
    assert {op.attrs["weight_bits"] for op in prog.layers()} == {case[2]}
    values = check_against_reference(prog, images)
    check_against_simulation(qm, prog, values, images)
    assert_not_degenerate(values, prog)
    kinds = {op.kind for op in prog.ops}
    assert {"conv2d", "global_avg_pool", "flatten", "fully_connected"} <= kinds
    if "v2" in case[0]:
        assert "add" in kinds
    if case[2] == 8:  # the trained models classify well: the program computes something meaningful
        accuracy = float((values[prog.output].argmax(1) == labels.numpy()).mean())
        assert accuracy >= 0.75, accuracy


@pytest.mark.parametrize("case", FMNIST_CASES, ids=lambda c: f"{c[0][:12]}-{c[1]}{c[2]}-{c[3]}")
def test_fashion_mnist_mobilenets_every_value_bitexact(case):
    _check_fmnist(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", FMNIST_SLOW_CASES, ids=lambda c: f"{c[0][:12]}-{c[1]}{c[2]}-{c[3]}")
def test_fashion_mnist_mobilenets_every_value_bitexact_all_methods(case):
    _check_fmnist(case)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_rounding_modes_give_different_programs_and_values(rounding):
    """Guard against a rounding flag that goes nowhere: the two modes' programs differ only in the mode, and
    the outputs differ somewhere (same images, same quantization parameters)."""
    _, pa = fmnist_program("mobilenet_v2_w0.5_sgd", "wess", 8, "double")
    _, pb = fmnist_program("mobilenet_v2_w0.5_sgd", "wess", 8, "single")
    _, images, _ = _fmnist()
    ja, jb = pa.to_json(), pb.to_json()
    assert ja["rounding"] == "double" and jb["rounding"] == "single"
    ja["rounding"] = jb["rounding"] = ja["info"] = jb["info"] = None
    assert ja == jb
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(pa.tensor_items(), pb.tensor_items()))
    p = pa if rounding == "double" else pb
    other = pb if rounding == "double" else pa
    # the interpreter in the other mode on this program's parameters reproduces the other program
    swapped = p.copy()
    swapped.rounding = other.rounding
    ref = NR.run_program(swapped, images)
    out = Emulator(other).run(images, capture=True)[1]
    assert_same_values(other, out, ref, "mode swapped")
    mine = Emulator(p).run(images, capture=True)[1]
    assert any(not np.array_equal(mine[op.name], out[op.name]) for op in p.ops), "the modes never differ"


# ----------------------------------------------------------------------------- the reference's own pieces
@settings(max_examples=max(20, settings.default.max_examples))
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    data=st.data(),
)
def test_reference_max_pool_is_the_literal_window_max(h, w, k, stride, data):
    """npu_reference.max_pool2d against the definition, one window at a time (padding never wins)."""
    pad = tuple(data.draw(st.integers(0, kk // 2)) for kk in (k[0], k[0], k[1], k[1]))
    if h + pad[0] + pad[1] < k[0] or w + pad[2] + pad[3] < k[1]:
        return
    x = np.random.default_rng(h * 7 + w).integers(-128, 128, (2, h, w, 3))
    got = NR.max_pool2d(x, k, stride, pad)
    for oh in range(got.shape[1]):
        for ow in range(got.shape[2]):
            r0, c0 = oh * stride[0] - pad[0], ow * stride[1] - pad[2]
            window = x[:, max(r0, 0) : r0 + k[0], max(c0, 0) : c0 + k[1]]
            assert np.array_equal(got[:, oh, ow], window.max(axis=(1, 2)))


def test_reference_input_rounding_examples():
    """Round half away from zero after one float32 division, then the zero point and the clamp."""
    x = np.array(
        [2.5, -2.5, 0.5, -0.5, 0.49999997, -0.49999997, 1.5, 126.5, 1e9, -np.inf, np.inf, -0.0], dtype=np.float32
    )
    want = [3, -3, 1, -1, 0, 0, 2, 127, 127, -128, 127, 0]
    assert NR.quantize_input(x, 1.0, 0).tolist() == want
    assert NR.quantize_input(x, 1.0, -1).tolist() == [2, -4, 0, -2, -1, -1, 1, 126, 127, -128, 127, -1]
    # against exact rational rounding of the float32 quotient (many values near ties)
    rng = np.random.default_rng(0)
    scale = np.float32(0.37)
    vals = np.concatenate([rng.normal(0, 50, 500), (rng.integers(-150, 150, 500) + 0.5) * 0.37]).astype(np.float32)
    quotients = vals / scale
    exact = []
    for v in quotients.tolist():
        f = Fraction(v)
        r = math.floor(abs(f) + Fraction(1, 2)) * (1 if f >= 0 else -1)
        exact.append(min(max(r + 5, -128), 127))
    assert NR.quantize_input(vals, float(scale), 5).tolist() == exact
    with pytest.raises(ValueError, match="NaN"):
        NR.quantize_input(np.array([np.nan], np.float32), 1.0, 0)


# ------------------------------------------------------------------------------------ input quantization
def test_program_input_quantization_equals_simulation():
    _, prog = fmnist_program("mobilenet_v2_w0.5_sgd", "wess", 8, "double")
    _, images, _ = _fmnist()
    g = torch.Generator().manual_seed(3)
    x = torch.cat([images[:8], 4 * torch.randn(8, 1, 28, 28, generator=g)])
    x[0, 0, 0, :6] = torch.tensor([float("inf"), -float("inf"), 1e30, -1e30, 0.0, -0.0])
    em = Emulator(prog)
    got = em.quantize_input(x)
    spec = prog.input
    sim = intmath.quantize_input(x, spec.scale, spec.zero_point).permute(0, 2, 3, 1).numpy()
    ref = NR.quantize_input(x.numpy(), spec.scale, spec.zero_point).transpose(0, 2, 3, 1)
    assert got.dtype == np.int8 and got.shape == (16, 28, 28, 1)
    assert np.array_equal(got, sim) and np.array_equal(got, ref)
    assert np.array_equal(em.quantize_input(x.permute(0, 2, 3, 1).numpy(), layout="NHWC"), got)
    assert got.min() == -128 and got.max() == 127  # the clamps were exercised
    # running on float images is running on their quantization
    assert np.array_equal(em.run(x), em.run(got))


def _one_op_program(shape, scale: float, zero_point: int) -> Program:
    """The smallest valid program on an (H, W, C) input: a flatten (only its input quantization matters)."""
    return Program(
        input=InputSpec("x", tuple(shape), scale, zero_point),
        ops=[Op(name="flat", kind="flatten", inputs=["x"])],
        output="flat",
    )


_FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=True, allow_subnormal=True)


@settings(max_examples=max(20, settings.default.max_examples))
@given(
    values=st.lists(_FLOAT32, min_size=1, max_size=60),
    scale=st.one_of(st.floats(2.0**-20, 2.0**10, width=32), st.sampled_from([2.0**-7, 0.5, 1.0, 1 / 3])),
    zero_point=st.integers(-128, 127),
    ties=st.lists(st.integers(-300, 300), max_size=20),
    dtype=st.sampled_from([np.float32, np.float64, np.float16]),
)
def test_input_quantization_three_ways(values, scale, zero_point, ties, dtype):
    """Emulator, simulation and numpy reference quantize any float image identically, including exact ties
    (k + 1/2) * scale with a power-of-two scale, +-inf, subnormals, and float64 / float16 inputs."""
    scale = float(np.float32(scale))
    pow2 = float(2.0 ** np.floor(np.log2(scale)))
    vals = np.array(values + [(k + 0.5) * pow2 for k in ties], dtype=np.float64)
    with np.errstate(over="ignore"):
        x = np.resize(vals, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5).astype(dtype)
    for s in (scale, pow2):
        em = Emulator(_one_op_program((4, 5, 3), s, zero_point))
        with np.errstate(over="ignore"):
            got = em.quantize_input(x)
            ref = NR.quantize_input(x, s, zero_point).transpose(0, 2, 3, 1)
        sim = intmath.quantize_input(torch.from_numpy(x), s, zero_point).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(got, ref), (s, zero_point)
        assert np.array_equal(got, sim), (s, zero_point)


# ---------------------------------------------------------------------------- torchvision mobilenet_v2
@functools.lru_cache(maxsize=None)
def _torchvision_mobilenet_v2():
    from support.torchvision_compat import torchvision_models

    torch.manual_seed(11)
    model = _randomize_batch_norms(torchvision_models().mobilenet_v2(weights=None), 11).eval()
    g = torch.Generator().manual_seed(12)
    calib = [torch.randn(2, 3, 224, 224, generator=g) for _ in range(2)]
    x = torch.randn(1, 3, 224, 224, generator=g)
    return npuq.prepare(model, calib[0]), calib, x


@functools.lru_cache(maxsize=None)
def torchvision_program(rounding: str):
    graph, calib, _ = _torchvision_mobilenet_v2()
    qm = npuq.quantize(graph, calib, weights="wess", bits=8, activations="mse", rounding=rounding)
    return qm, npuq.compile(qm)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_torchvision_mobilenet_v2_224_every_value_bitexact(rounding):
    qm, prog = torchvision_program(rounding)
    _, _, x = _torchvision_mobilenet_v2()
    assert prog.input.shape == (224, 224, 3) and len(prog.layers()) == 53
    assert sum(op.kind == "add" for op in prog.ops) == 10
    values = check_against_reference(prog, x)
    check_against_simulation(qm, prog, values, x)
    assert_not_degenerate(values, prog)


# ----------------------------------------------------------------------------------------- determinism
def test_threads_and_batch_size_do_not_change_any_value():
    _, prog = fmnist_program("mobilenet_v2_w0.5_sgd", "wess", 8, "single")
    _, images, _ = _fmnist()
    xq = Emulator(prog).quantize_input(images)
    runs = [
        Emulator(prog, threads=1).run(xq, capture=True)[1],
        Emulator(prog, threads=2).run(xq, capture=True)[1],
        Emulator(prog, batch_size=7).run(xq, capture=True)[1],
        Emulator(prog, batch_size=500).run(xq, capture=True, threads=1)[1],
        Emulator(prog, batch_size=7, threads=2).run(xq, capture=True, threads=1)[1],
    ]
    for other in runs[1:]:
        assert_same_values(prog, other, runs[0], "threads / batch size")
    em = Emulator(prog, batch_size=7)
    for i in (0, 13, 63):  # one image alone gives that image's row of the batch
        assert np.array_equal(em.run(xq[i : i + 1]), runs[0][prog.output][i : i + 1])
    assert np.array_equal(em.run(xq), Emulator(prog).run(xq))  # and run twice gives the same


def test_threads_do_not_change_torchvision_values():
    _, prog = torchvision_program("double")
    _, calib, _ = _torchvision_mobilenet_v2()
    x = calib[0]
    a = Emulator(prog, threads=1).run(x, capture=True)[1]
    b = Emulator(prog, threads=2, batch_size=1).run(x, capture=True)[1]
    assert_same_values(prog, a, b, "threads")


# --------------------------------------------------------------------------------------- overflow policy
def _tiny_program(rounding: str, overflow: str) -> tuple[Program, np.ndarray]:
    """A compiled conv -> global pool -> flatten -> linear program whose classifier bias is then pushed to
    the int32 edge, so its accumulators leave int32 (a hand edit; the quantizer never produces this)."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    ).eval()
    g = torch.Generator().manual_seed(6)
    calib = [torch.randn(4, 2, 6, 6, generator=g)]
    prog = npuq.compile(npuq.quantize(model, calib, activations="minmax", rounding=rounding, overflow=overflow))
    fc = prog.op(prog.output)
    fc.tensors["bias"] = np.array([2**31 - 1, -(2**31), 2**31 - 200, 5], dtype=np.int32)
    fc.tensors["weight"] = np.full_like(fc.tensors["weight"], 100)
    fc.tensors["weight"][1] = -100
    fc.attrs["input_zero_point"] = -128  # every input - zero point >= 0: the sums push past the edge
    return prog, torch.randn(8, 2, 6, 6, generator=g).numpy()


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_overflow_policy_bitexact(overflow, rounding):
    prog, x = _tiny_program(rounding, overflow)
    values = check_against_reference(prog, x)
    # the edit did overflow: the classifier's accumulators are outside int32 for channels 0 to 2
    fc = prog.op(prog.output)
    pooled = values[fc.inputs[0]].astype(np.int64)
    acc = (pooled + 128) @ fc.tensors["weight"].astype(np.int64).T + fc.tensors["bias"].astype(np.int64)
    assert (acc[:, :2] > 2**31 - 1).any() or (acc[:, :2] < -(2**31)).any()


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_overflow_raise_in_both(rounding):
    prog, x = _tiny_program(rounding, "raise")
    with pytest.raises(OverflowError):
        Emulator(prog).run(x)
    with pytest.raises(OverflowError):
        NR.run_program(prog, x)


# ----------------------------------------------------------------------- random small networks (hypothesis)
RANDOM_NET_CASES = 0  # examples run by the property below (reported by the next test)


@settings(
    max_examples=settings.default.max_examples, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    spec=small_networks(),
    rounding=st.sampled_from(ROUNDINGS),
    weights=st.sampled_from(["per_layer", "per_channel", "wess", "wess_mse"]),
    bits=st.integers(2, 8),
    observer=st.sampled_from(["minmax", "mse", "percentile"]),
)
def test_random_networks_bitexact(spec, rounding, weights, bits, observer):
    global RANDOM_NET_CASES
    torch.manual_seed(spec["seed"])
    model = _randomize_batch_norms(SmallNet(spec), spec["seed"]).eval()
    g = torch.Generator().manual_seed(spec["seed"])
    shape = (spec["c_in"], spec["h"], spec["w"])
    calib = [torch.randn(4, *shape, generator=g) for _ in range(2)]
    x = 1.5 * torch.randn(3, *shape, generator=g)  # beyond the calibrated range: clamps are exercised
    qm = npuq.quantize(model, calib, weights=weights, bits=bits, activations=observer, rounding=rounding)
    prog = npuq.compile(qm)
    kinds = [op.kind for op in prog.ops]
    assert kinds.count("conv2d") == conv_count(spec)
    assert kinds.count("add") == sum(b["kind"] == "conv" and b["residual"] for b in spec["blocks"])
    values = check_against_reference(prog, x)
    check_against_simulation(qm, prog, values, x)
    RANDOM_NET_CASES += 1


def test_random_networks_case_count(request):
    """Reports (with -s) how many random networks the property above checked; when the property ran in this
    session (it comes first in the file), it must have checked at least one."""
    print(f"\nrandom networks checked bit-exact: {RANDOM_NET_CASES}")
    if any(item.name == "test_random_networks_bitexact" for item in request.session.items):
        assert RANDOM_NET_CASES > 0
