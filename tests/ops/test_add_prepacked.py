"""npuq.ops.Add, the add with its parameters checked once (docs/ops.md): the same results as npuq.ops.add,
the numpy oracle and the scalar reference for every input add takes (numpy, torch channels_last and
contiguous, odd layouts, any shape), the same errors for every bad parameter (at construction) and every
bad array (at the call), and the emulator building one per add op of a program."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuq
from npuq import _cuda
from npuq.npu import Emulator
from support import npu_reference as NR
from support import reference_numpy as R
from support.helpers import assert_same, isa_threads, scaled_examples, using_isa
from support.op_cases import add_case
from support.program_builders import add_op, build_program

A = np.arange(-12, 12, dtype=np.int8).reshape(1, 2, 3, 4)
GOOD = dict(npuq.ops.add_params(0.1, 0.2, 0.25), a_zero_point=1, b_zero_point=-2, output_zero_point=3)


def _names(msg: str, names) -> bool:
    names = [names] if isinstance(names, str) else names
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg) for n in names)


def _error_of(fn):
    """The exception ``fn()`` raises (the test fails if it raises none)."""
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is compared with add's below
        fn()
    return info.value


def _same_error(prepacked, functional, names):
    """Both calls raise, with one exception type and one message, and the message names one of ``names``."""
    got, want = _error_of(prepacked), _error_of(functional)
    assert type(got) is type(want), f"{type(got).__name__}: {got} vs add's {type(want).__name__}: {want}"
    assert str(got) == str(want)
    assert _names(str(got), names), f"the message does not name {names}: {got}"


# ------------------------------------------------------------------------------------------------ results
@scaled_examples(3)
@given(add_case(), isa_threads(), st.sampled_from([None, 1, 2]))
def test_add_prepacked_equals_add_the_oracle_and_the_reference(case, isa_and_threads, default_threads):
    a, b, kw, _ = case
    isa, threads = isa_and_threads
    layer = npuq.ops.Add(threads=default_threads, **kw)
    expected = R.add(a, b, **kw)
    with using_isa(isa):
        got = layer(a, b, threads=threads)
        assert_same(expected, got, f"Add isa={isa} threads={threads} default {default_threads}")
        assert_same(expected, npuq.ops.add(a, b, threads=threads, **kw), "npuq.ops.add")
    assert_same(expected, npuq.ops.reference.add(a, b, **kw), "npuq.ops.reference.add")
    assert_same(expected, layer(a, b), "Add called again")


@scaled_examples(2)
@given(add_case(), st.sampled_from(["strided", "fortran", "readonly", "subclass", "flat", "scalar"]))
def test_odd_but_valid_numpy_arrays_give_adds_result(case, how):
    a, b, kw, _ = case
    if how == "strided":  # every other channel, a view that is not C-contiguous
        a, b = np.concatenate([a, a], axis=3)[..., ::2], np.concatenate([b, b], axis=3)[..., ::2]
    elif how == "fortran":
        a, b = np.asfortranarray(a), np.asfortranarray(b)
    elif how == "readonly":
        a.flags.writeable = b.flags.writeable = False
    elif how == "subclass":
        a, b = a.view(_Sub), b.view(_Sub)
    elif how == "flat":
        a, b = a.reshape(-1), b.reshape(-1)
    else:
        a, b = a.reshape(-1)[:1].reshape(()), b.reshape(-1)[:1].reshape(())  # 0-d arrays
    got = npuq.ops.Add(**kw)(a, b)
    want = npuq.ops.add(a, b, **kw)
    assert type(got) is type(want) is np.ndarray
    assert_same(want, got, how)
    assert_same(R.add(np.asarray(a), np.asarray(b), **kw), got, f"{how} against the oracle")


class _Sub(np.ndarray):
    """A numpy subclass: not the fast path's exact type, still an array add takes."""


def test_one_add_serves_many_shapes():
    layer = npuq.ops.Add(**GOOD)
    rng = np.random.default_rng(7)
    shapes = [(1, 1, 1, 16), (1, 56, 56, 24), (3,), (), (5, 7), (1, 7, 7, 160), (2, 3, 4, 5, 6), (1, 1, 1, 16)]
    for shape in shapes * 2:  # each shape after every other: nothing of one call stays for the next
        a = rng.integers(-128, 128, shape, dtype=np.int8)
        b = rng.integers(-128, 128, shape, dtype=np.int8)
        assert_same(R.add(a, b, **GOOD), layer(a, b), f"shape {shape}")
        assert_same(npuq.ops.add(a, b, **GOOD), layer(a, b, threads=2), f"shape {shape}, 2 threads")


# ------------------------------------------------------------------------------------------------ torch
LAYOUTS = ["channels_last", "contiguous", "mixed", "flat"]


def _torch_pair(torch, a, b, layout):
    t_a, t_b = (torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2) for x in (a, b))  # channels_last
    if layout == "contiguous":
        return t_a.contiguous(), t_b.contiguous()
    if layout == "mixed":  # add then reads both as NHWC, copying b with a LayoutWarning
        return t_a, t_b.contiguous()
    if layout == "flat":
        return torch.from_numpy(a.reshape(a.shape[0], -1)), torch.from_numpy(b.reshape(b.shape[0], -1))
    return t_a, t_b


def _recorded(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, sorted(w.category.__name__ for w in caught)


@scaled_examples(2)
@given(add_case(), st.sampled_from(LAYOUTS))
def test_torch_tensors_give_adds_result_in_adds_layout(case, layout):
    torch = pytest.importorskip("torch")
    a, b, kw, _ = case
    t_a, t_b = _torch_pair(torch, a, b, layout)
    got, got_warnings = _recorded(lambda: npuq.ops.Add(**kw)(t_a, t_b))
    want, want_warnings = _recorded(lambda: npuq.ops.add(t_a, t_b, **kw))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int8
    assert got.shape == want.shape and got.stride() == want.stride(), (got.stride(), want.stride())
    assert torch.equal(got, want)
    assert got_warnings == want_warnings
    if layout in ("channels_last", "mixed"):
        assert got.is_contiguous(memory_format=torch.channels_last)
    expected = R.add(a, b, **kw)
    nhwc = got.permute(0, 2, 3, 1).numpy() if got.dim() == 4 else got.numpy().reshape(expected.shape)
    assert_same(expected, nhwc, f"torch {layout} against the oracle")


# ------------------------------------------------------------------------------------------------ parameters
_JUNK = st.sampled_from([None, True, 1.5, "3", b"\x01", [1], np.float32(2.0)])


def _outside(lo: int, hi: int):
    return st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1), _JUNK)


BAD_VALUES = {
    "a_zero_point": _outside(-128, 127),
    "b_zero_point": _outside(-128, 127),
    "output_zero_point": _outside(-128, 127),
    # not a Q31 mantissa (0 or in [2^30, 2^31 - 1]): between, negative, or past int32
    "a_multiplier": st.one_of(st.integers(1, 2**30 - 1), _outside(0, 2**31 - 1)),
    "b_multiplier": st.one_of(st.integers(1, 2**30 - 1), _outside(0, 2**31 - 1)),
    "output_multiplier": st.one_of(st.integers(1, 2**30 - 1), _outside(0, 2**31 - 1)),
    "a_exponent": _outside(-31, 0),  # docs/arithmetic.md 6: the input exponents are <= 0
    "b_exponent": _outside(-31, 0),
    "output_exponent": _outside(-31, 30),
    "left_shift": _outside(0, 22),
    "act_min": _outside(-128, 127),
    "act_max": _outside(-128, 127),
    "rounding": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("double", "single")), _JUNK),
    "threads": _outside(1, int(npuq.MAX_THREADS)).filter(lambda v: v is not None),  # None: the default
}


def test_every_keyword_of_add_has_bad_values_here():
    import inspect

    keywords = set(inspect.signature(npuq.ops.Add).parameters)
    assert keywords == set(BAD_VALUES)
    assert keywords | {"a", "b", "reference"} == set(inspect.signature(npuq.ops._add).parameters)  # add's keywords


@pytest.mark.parametrize("key", list(BAD_VALUES))
@given(data=st.data())
def test_a_bad_parameter_is_refused_at_construction_with_adds_error(key, data):
    value = data.draw(BAD_VALUES[key], label=key)
    kw = dict(GOOD, **{key: value})
    _same_error(lambda: npuq.ops.Add(**kw), lambda: npuq.ops.add(A, A, **kw), key)


@pytest.mark.parametrize(
    "change",
    [dict(act_min=5, act_max=4), dict(act_min=127, act_max=-128), dict(a_zero_point=200, b_multiplier=5)],
)
def test_clamps_out_of_order_and_several_bad_values_give_adds_first_error(change):
    kw = dict(GOOD, **change)
    _same_error(lambda: npuq.ops.Add(**kw), lambda: npuq.ops.add(A, A, **kw), list(change))


def test_missing_and_unknown_keywords_are_type_errors():
    with pytest.raises(TypeError, match="a_zero_point"):
        npuq.ops.Add(**{k: v for k, v in GOOD.items() if k != "a_zero_point"})
    with pytest.raises(TypeError, match="zero_point_a"):
        npuq.ops.Add(zero_point_a=0, **GOOD)
    with pytest.raises(TypeError):
        npuq.ops.Add(0, **GOOD)  # keywords only, as add's


def test_the_parameters_are_read_only_attributes_and_the_repr_rebuilds_the_add():
    kw = dict(GOOD, a_zero_point=np.int16(-5), left_shift=np.int64(18), act_min=-100, act_max=90, rounding="single")
    layer = npuq.ops.Add(threads=2, **kw)
    for key, value in kw.items():
        got = getattr(layer, key)
        assert got == value and type(got) is type(value if isinstance(value, str) else 0), (key, got)
    assert layer.threads == 2 and npuq.ops.Add(**GOOD).threads is None
    for key in [*kw, "threads"]:
        with pytest.raises(AttributeError):
            setattr(layer, key, 0)
    with pytest.raises(AttributeError):
        layer.weight = 1  # nothing else to set either
    text = repr(layer)
    assert text.startswith("npuq.ops.Add(a_zero_point=-5, ") and "rounding='single'" in text and "threads=2" in text
    rebuilt = eval(text, {"npuq": npuq})
    assert repr(rebuilt) == text
    rng = np.random.default_rng(3)
    a, b = (rng.integers(-128, 128, (2, 5, 5, 8), dtype=np.int8) for _ in range(2))
    assert_same(layer(a, b), rebuilt(a, b), "the add rebuilt from its repr")
    assert "threads" not in repr(npuq.ops.Add(**GOOD))


def test_add_is_exported_with_the_ops():
    assert "Add" in npuq.ops.__all__ and npuq.ops.Add.__module__ == "npuq.ops"


# ------------------------------------------------------------------------------------------------ bad arrays
def _bad_arrays():
    i32 = A.astype(np.int32)
    cases = [
        ("b int32", A, i32, {}, "b"),
        ("a uint8", A.view(np.uint8), A, {}, "a"),
        ("shapes differ", A, A[:, :, :2], {}, ["a", "b", "shape"]),
        ("ranks differ", A, A.reshape(2, 3, 4), {}, ["a", "b", "shape"]),
        ("empty", A[:0], A[:0], {}, ["a", "empty"]),
        ("a list", [1, 2], A, {}, "a"),
        ("b None", A, None, {}, "b"),
        ("threads 0", A, A, dict(threads=0), "threads"),
        ("threads True", A, A, dict(threads=True), "threads"),
        ("threads past the maximum", A, A, dict(threads=int(npuq.MAX_THREADS) + 1), "threads"),
        ("device and host", _DeviceArray(A.shape), A, {}, ["a", "device"]),
        ("host and device", A, _DeviceArray(A.shape), {}, ["b", "device"]),
    ]
    try:
        import torch
    except ImportError:
        return cases
    t = torch.from_numpy(A).permute(0, 3, 1, 2)  # channels_last
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's deprecation note on quantized tensors
        quantized = torch.quantize_per_tensor(t.float(), 0.1, 0, torch.qint8)
    return cases + [
        ("numpy and torch", A, t, {}, ["numpy", "torch"]),
        ("torch and numpy", t, A, {}, ["numpy", "torch"]),
        ("torch int32", t, t.to(torch.int32), {}, "b"),
        ("torch shapes differ", t, torch.from_numpy(A[..., :2].copy()).permute(0, 3, 1, 2), {}, ["a", "b", "shape"]),
        ("torch quantized", quantized, t, {}, "a"),
        ("torch 3-D and 4-D", t[0], t, {}, ["a", "b", "shape"]),
    ]


class _DeviceArray:
    """An object with ``__cuda_array_interface__`` whose pointer is never read: the checks before any
    CUDA call (mixing it with a host array is refused first)."""

    def __init__(self, shape):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "|i1", "data": (0x10000, False), "version": 3}


BAD_ARRAYS = _bad_arrays()


@pytest.mark.parametrize("what, a, b, call, names", BAD_ARRAYS, ids=[case[0] for case in BAD_ARRAYS])
def test_bad_arrays_at_the_call_raise_adds_error(what, a, b, call, names):
    layer = npuq.ops.Add(**GOOD)
    _same_error(lambda: layer(a, b, **call), lambda: npuq.ops.add(a, b, **GOOD, **call), names)


# ------------------------------------------------------------------------------------------------ emulator
def _two_add_program(rounding: str):
    """x (5, 5, 8) -> sum = add(x, x) (clamped) -> twice = add(sum, x), a and b scaled differently (an input
    swapped would show)."""
    first = add_op("sum", "x", "x")
    first.attrs.update(GOOD, output_zero_point=-7, act_min=-100, act_max=100)
    second = add_op("twice", "sum", "x")
    second.attrs.update(GOOD)
    program = build_program((5, 5, 8), first, second)
    program.rounding = rounding
    return program


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_the_emulator_packs_each_add_once_and_runs_it_bit_exactly(rounding, monkeypatch):
    built = []

    class Counted(npuq.ops.Add):
        __slots__ = ()

        def __init__(self, **kw):
            built.append(kw["rounding"])
            super().__init__(**kw)

    program = _two_add_program(rounding)
    first, second = program.ops
    monkeypatch.setattr(npuq.ops, "Add", Counted)
    emu = Emulator(program, threads=1)
    assert built == [rounding, rounding]  # one per add op of the program, with the program's rounding
    assert all(type(emu._kernels[name]) is Counted for name in ("sum", "twice"))
    x = np.random.default_rng(5).integers(-128, 128, (3, 5, 5, 8), dtype=np.int8)
    for _ in range(2):
        out, values = emu.run(x, capture=True)
        expected = NR.run_op(first, [x, x], rounding, program.overflow).astype(np.int8)
        assert_same(expected, values["sum"], "the emulator's add")
        assert_same(NR.run_op(second, [expected, x], rounding, program.overflow).astype(np.int8), out, "the second")
    assert len(built) == 2  # running builds nothing


# ------------------------------------------------------------------------------------------------ on a GPU
_INFO = _cuda.info()
needs_gpu = pytest.mark.skipif(
    not (_INFO["built"] and _INFO["devices"] > 0), reason=f"needs a CUDA GPU and npuq's CUDA kernels: {_INFO['reason']}"
)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind", ["CudaArray", "torch channels_last", "torch contiguous"])
@given(case=add_case())
def test_add_prepacked_on_the_gpu_equals_add_there(kind, case):
    a, b, kw, _ = case
    layer, expected = npuq.ops.Add(**kw), R.add(a, b, **kw)
    if kind == "CudaArray":
        d_a, d_b = _cuda.to_device(a, 0), _cuda.to_device(b, 0)
        got, want = layer(d_a, d_b), npuq.ops.add(d_a, d_b, **kw)
        assert type(got) is type(want)
        assert_same(expected, _cuda.to_host(got), "Add on CudaArrays")
        assert_same(expected, _cuda.to_host(want), "add on CudaArrays")
        return
    torch = pytest.importorskip("torch")
    d_a, d_b = (torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).cuda() for x in (a, b))
    if kind == "torch contiguous":
        d_a, d_b = d_a.contiguous(), d_b.contiguous()
    else:
        d_a, d_b = (t.contiguous(memory_format=torch.channels_last) for t in (d_a, d_b))
    got, want = layer(d_a, d_b), npuq.ops.add(d_a, d_b, **kw)
    assert got.is_cuda and got.shape == want.shape and got.stride() == want.stride()
    assert torch.equal(got, want)
    assert_same(expected, got.permute(0, 2, 3, 1).cpu().numpy(), f"Add on {kind} CUDA tensors")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_the_gpu_emulator_runs_the_packed_adds_as_the_cpu_one(rounding):
    program = _two_add_program(rounding)
    x = np.random.default_rng(6).integers(-128, 128, (4, 5, 5, 8), dtype=np.int8)
    want = Emulator(program).run(x)
    assert_same(want, Emulator(program, device="cuda").run(x), "the program on the GPU")
