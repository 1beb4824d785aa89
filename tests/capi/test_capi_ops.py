"""npuq's C ABI (libnpuq, csrc/include/npuq.h), called through ctypes: every op equals the Python API bit for
bit on random cases, and every bad argument is a status with a message, never a crash."""

import ctypes as C
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuq
from support import capi
from support import reference_numpy as R
from support.helpers import scaled_examples
from support.op_cases import add_case, conv_case, fc_case, pool_case

L = capi.lib()
ptr = capi.ptr


def _pair(v):
    return R._pair(v, "v")


def _conv_struct(wt, geometry, params):
    groups = geometry.get("groups", 1)
    kh, kw = wt.shape[1], wt.shape[2]
    sh, sw = _pair(geometry.get("stride", 1))
    dh, dw = _pair(geometry.get("dilation", 1))
    t, b, left, r = R.normalize_padding(geometry.get("padding", 0))
    rq, keep = capi.requant(
        params["multiplier"],
        params["exponent"],
        params.get("channel_shift"),
        params.get("output_zero_point", 0),
        params.get("act_min", -128),
        params.get("act_max", 127),
        params.get("rounding", "double"),
    )
    p = capi.Conv2dParams(
        in_channels=wt.shape[3] * groups,
        out_channels=wt.shape[0],
        kernel_h=kh,
        kernel_w=kw,
        stride_h=sh,
        stride_w=sw,
        dilation_h=dh,
        dilation_w=dw,
        pad_top=t,
        pad_bottom=b,
        pad_left=left,
        pad_right=r,
        groups=groups,
        input_zero_point=geometry.get("input_zero_point", 0),
        overflow=capi.OVERFLOW[params.get("overflow", "raise")],
        requant=rq,
    )
    return p, keep


def _c_conv(x, wt, bias, geometry, params, threads=0):
    p, _keep = _conv_struct(wt, geometry, params)
    oh, ow = C.c_int64(), C.c_int64()
    capi.check(L.npuq_conv2d_output_size(C.byref(p), x.shape[1], x.shape[2], C.byref(oh), C.byref(ow)))
    out = np.empty((x.shape[0], oh.value, ow.value, wt.shape[0]), np.int8)
    b = None if bias is None else np.ascontiguousarray(bias, np.int32)
    capi.check(
        L.npuq_conv2d(
            C.byref(p),
            ptr(x),
            *x.shape[:3],
            x.size,
            ptr(wt),
            wt.size,
            ptr(b, C.c_int32),
            0 if b is None else b.size,
            ptr(out),
            out.size,
            threads,
        )
    )
    return out


def _python(f):
    try:
        return f()
    except OverflowError:
        return OverflowError


def _c(f):
    try:
        return f()
    except capi.CApiError as e:
        if e.status == "NPUQ_ACCUMULATOR_OVERFLOW":
            return OverflowError
        raise


def _same(a, b):
    if a is OverflowError or b is OverflowError:
        assert a is b
    else:
        np.testing.assert_array_equal(a, b)


@scaled_examples(10)
@given(conv_case(), st.sampled_from([0, 1, 2]))
def test_conv2d_equals_python_api(case, threads):
    x, wt, bias, geometry, params = case
    expected = _python(lambda: npuq.ops.conv2d(x, wt, bias, **geometry, **params))
    _same(_c(lambda: _c_conv(x, wt, bias, geometry, params, threads)), expected)


@scaled_examples(10)
@given(conv_case())
def test_conv2d_accumulators_equal_the_oracle(case):
    x, wt, bias, geometry, params = case
    p, _keep = _conv_struct(wt, geometry, params)
    oh, ow = C.c_int64(), C.c_int64()
    capi.check(L.npuq_conv2d_output_size(C.byref(p), x.shape[1], x.shape[2], C.byref(oh), C.byref(ow)))
    acc = np.empty((x.shape[0], oh.value, ow.value, wt.shape[0]), np.int32)
    b = None if bias is None else np.ascontiguousarray(bias, np.int32)
    overflow = params.get("overflow", "raise")
    exact = R.conv2d_acc(x, wt, bias, **geometry)
    try:
        expected = R.apply_overflow(exact, overflow)
    except OverflowError:
        expected = OverflowError
    got = _c(
        lambda: (
            capi.check(
                L.npuq_conv2d_accumulators(
                    C.byref(p),
                    ptr(x),
                    *x.shape[:3],
                    x.size,
                    ptr(wt),
                    wt.size,
                    ptr(b, C.c_int32),
                    0 if b is None else b.size,
                    ptr(acc, C.c_int32),
                    acc.size,
                )
            )
            or acc
        )
    )
    _same(got, expected)
    if expected is not OverflowError:  # and the Python API's accumulators are the same values
        layer = npuq.ops.Conv2d(wt, bias, **geometry, **params)
        np.testing.assert_array_equal(layer.accumulators(x), expected)


def test_conv2d_plan_runs_many_inputs_and_threads_concurrently():
    rng = np.random.default_rng(5)
    wt = rng.integers(-127, 128, (32, 3, 3, 16), dtype=np.int8)
    bias = rng.integers(-5000, 5000, 32).astype(np.int32)
    params = dict(multiplier=1 << 30, exponent=-8, channel_shift=rng.integers(0, 4, 32), output_zero_point=3)
    geometry = dict(stride=2, padding=1, input_zero_point=-7)
    p, _keep = _conv_struct(wt, geometry, params)
    plan = C.c_void_p()
    capi.check(L.npuq_conv2d_plan_create(C.byref(p), ptr(wt), wt.size, ptr(bias, C.c_int32), bias.size, C.byref(plan)))
    layer = npuq.ops.Conv2d(wt, bias, **geometry, **params)
    xs = [rng.integers(-128, 128, (n, 17 + n, 9 + 2 * n, 16), dtype=np.int8) for n in range(1, 9)]
    results: dict[int, np.ndarray] = {}

    def worker(i):
        x = xs[i]
        oh, ow = (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2
        out = np.empty((x.shape[0], oh, ow, 32), np.int8)
        capi.check(L.npuq_conv2d_plan_run(plan, ptr(x), *x.shape[:3], x.size, ptr(out), out.size, 1 + i % 2))
        results[i] = out

    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        L.npuq_conv2d_plan_free(plan)
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(results[i], layer(x))


@scaled_examples(10)
@given(fc_case())
def test_fully_connected_equals_python_api(case):
    x, w, bias, kw = case
    expected = _python(lambda: npuq.ops.fully_connected(x, w, bias, **kw))
    rq, _keep = capi.requant(
        kw["multiplier"],
        kw["exponent"],
        kw.get("channel_shift"),
        kw.get("output_zero_point", 0),
        kw.get("act_min", -128),
        kw.get("act_max", 127),
        kw.get("rounding", "double"),
    )
    p = capi.FcParams(w.shape[1], w.shape[0], kw["input_zero_point"], capi.OVERFLOW[kw.get("overflow", "raise")], rq)
    out = np.empty((x.shape[0], w.shape[0]), np.int8)
    b = None if bias is None else np.ascontiguousarray(bias, np.int32)

    def run():
        capi.check(
            L.npuq_fully_connected(
                C.byref(p),
                ptr(x),
                x.shape[0],
                x.size,
                ptr(w),
                w.size,
                ptr(b, C.c_int32),
                0 if b is None else b.size,
                ptr(out),
                out.size,
                0,
            )
        )
        return out

    _same(_c(run), expected)


@scaled_examples(20)
@given(
    st.integers(-(2**31), 2**31 - 1),
    st.one_of(st.just(0), st.integers(2**30, 2**31 - 1)),
    st.integers(-31, 30),
    st.integers(0, 15),
    st.integers(-128, 127),
    st.sampled_from(["double", "single"]),
)
def test_requantize_one_equals_python_api(acc, m0, e, s, zp, rounding):
    if e - s < -31:
        s = e + 31
    expected = npuq.ops.requantize(
        np.array([acc], np.int32),
        multiplier=m0,
        exponent=e,
        channel_shift=[s],
        output_zero_point=zp,
        rounding=rounding,
    )[0]
    out = C.c_int8()
    capi.check(L.npuq_requantize_one(acc, m0, e, s, zp, -128, 127, capi.ROUNDING[rounding], C.byref(out)))
    assert out.value == expected


@scaled_examples(10)
@given(st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from(["double", "single"]))
def test_requantize_equals_python_api(seed, per_channel, rounding):
    rng = np.random.default_rng(seed)
    rows, ch = int(rng.integers(1, 50)), int(rng.integers(1, 70))
    acc = rng.integers(-(2**31), 2**31, (rows, ch)).astype(np.int32)
    m = rng.integers(2**30, 2**31, ch if per_channel else 1)
    e = rng.integers(-20, 5, ch if per_channel else 1)
    s = rng.integers(0, 16, ch)
    kw = dict(
        multiplier=m if per_channel else int(m[0]),
        exponent=e if per_channel else int(e[0]),
        channel_shift=s,
        output_zero_point=int(rng.integers(-128, 128)),
        act_min=-100,
        act_max=120,
        rounding=rounding,
    )
    if np.any((e if per_channel else e[0]) - s < -31):
        return
    expected = npuq.ops.requantize(acc, **kw)
    rq, _keep = capi.requant(m, e, s, kw["output_zero_point"], -100, 120, rounding)
    out = np.empty_like(acc, dtype=np.int8)
    capi.check(L.npuq_requantize(ptr(acc, C.c_int32), rows, ch, C.byref(rq), ptr(out), out.size, 0))
    np.testing.assert_array_equal(out, expected)


@scaled_examples(10)
@given(add_case())
def test_add_equals_python_api(case):
    a, b, kw, _ = case
    expected = npuq.ops.add(a, b, **kw)
    p = capi.AddParams(
        kw["a_zero_point"],
        kw["a_multiplier"],
        kw["a_exponent"],
        kw["b_zero_point"],
        kw["b_multiplier"],
        kw["b_exponent"],
        kw["output_zero_point"],
        kw["output_multiplier"],
        kw["output_exponent"],
        kw["left_shift"],
        kw["act_min"],
        kw["act_max"],
        capi.ROUNDING[kw["rounding"]],
    )
    out = np.empty_like(a)
    capi.check(L.npuq_add(C.byref(p), ptr(a), ptr(b), a.size, ptr(out), 0))
    np.testing.assert_array_equal(out, expected)


def _pool_struct(x, kernel, kw, ceil_mode=False):
    kh, kwid = _pair(kernel)
    sh, sw = _pair(kw.get("stride") or kernel)
    t, b, left, r = R.normalize_padding(kw.get("padding", 0))
    n, h, w, c = x.shape
    return capi.Pool2dParams(
        n,
        h,
        w,
        c,
        kh,
        kwid,
        sh,
        sw,
        t,
        b,
        left,
        r,
        int(kw.get("count_include_pad", False)),
        int(ceil_mode),
        kw.get("input_zero_point", 0),
        kw.get("act_min", -128),
        kw.get("act_max", 127),
    )


@scaled_examples(10)
@given(pool_case())
def test_avg_and_max_pool_equal_python_api(case):
    x, kernel, kw = case
    for max_pool in (False, True):
        if max_pool:
            expected = npuq.ops.max_pool2d(x, kernel, stride=kw["stride"], padding=kw["padding"])
            p = _pool_struct(x, kernel, {"stride": kw["stride"], "padding": kw["padding"]})
        else:
            expected = npuq.ops.avg_pool2d(x, kernel, **kw)
            p = _pool_struct(x, kernel, kw)
        oh, ow = C.c_int64(), C.c_int64()
        capi.check(L.npuq_pool2d_output_size(C.byref(p), int(max_pool), C.byref(oh), C.byref(ow)))
        out = np.empty((x.shape[0], oh.value, ow.value, x.shape[3]), np.int8)
        f = L.npuq_max_pool2d if max_pool else L.npuq_avg_pool2d
        capi.check(f(C.byref(p), ptr(x), x.size, ptr(out), out.size, 0))
        np.testing.assert_array_equal(out, expected)


def test_format2_ops_equal_python_api():
    rng = np.random.default_rng(11)
    for trial in range(20):
        n, h, w, c = (int(v) for v in rng.integers(1, 6, 4) + np.array([0, 0, 0, trial]))
        x = rng.integers(-128, 128, (n, h, w, c), dtype=np.int8)
        # lut
        table = rng.integers(-128, 128, 256, dtype=np.int8)
        out = np.empty_like(x)
        capi.check(L.npuq_lut(ptr(x), x.size, ptr(table), ptr(out), 0))
        np.testing.assert_array_equal(out, npuq.ops.lut(x, table))
        # mul, with and without the SE broadcast
        mp = dict(
            a_zero_point=int(rng.integers(-128, 128)),
            b_zero_point=int(rng.integers(-128, 128)),
            output_zero_point=int(rng.integers(-128, 128)),
            multiplier=int(rng.integers(2**30, 2**31)),
            exponent=int(rng.integers(-12, -4)),
            act_min=-128,
            act_max=127,
        )
        for broadcast in (False, True):
            b = rng.integers(-128, 128, (n, 1, 1, c) if broadcast else (n, h, w, c), dtype=np.int8)
            p = capi.MulParams(
                n,
                h * w,
                c,
                int(broadcast),
                mp["a_zero_point"],
                mp["b_zero_point"],
                mp["output_zero_point"],
                mp["multiplier"],
                mp["exponent"],
                -128,
                127,
                0,
            )
            out = np.empty_like(x)
            capi.check(L.npuq_mul(C.byref(p), ptr(x), x.size, ptr(b), b.size, ptr(out), out.size, 0))
            np.testing.assert_array_equal(out, npuq.ops.mul(x, b, **mp))
        # concat of three inputs
        parts = [rng.integers(-128, 128, (n, h, w, int(k)), dtype=np.int8) for k in rng.integers(1, 9, 3)]
        zps = [int(v) for v in rng.integers(-128, 128, 3)]
        ms = [int(v) for v in rng.integers(2**30, 2**31, 3)]
        es = [int(v) for v in rng.integers(-1, 2, 3)]
        ozp = int(rng.integers(-128, 128))
        expected = npuq.ops.concat(parts, zero_points=zps, multipliers=ms, exponents=es, output_zero_point=ozp)
        arr = (capi.ConcatInput * 3)(
            *[capi.ConcatInput(ptr(q), q.size, q.shape[3], zps[i], ms[i], es[i]) for i, q in enumerate(parts)]
        )
        out = np.empty(expected.shape, np.int8)
        capi.check(L.npuq_concat(arr, 3, n * h * w, ozp, 0, ptr(out), out.size, 0))
        np.testing.assert_array_equal(out, expected)
        # mean, both roundings
        for tfl in (False, True):
            kw = dict(
                input_zero_point=int(rng.integers(-128, 128)),
                output_zero_point=int(rng.integers(-128, 128)),
                multiplier=int(rng.integers(2**30, 2**31)),
                exponent=int(rng.integers(-6, 1)),
                act_min=-128,
                act_max=127,
                tflite_rounding=tfl,
            )
            p = capi.MeanParams(
                n,
                h,
                w,
                c,
                kw["input_zero_point"],
                kw["output_zero_point"],
                kw["multiplier"],
                kw["exponent"],
                -128,
                127,
                int(tfl),
                0,
            )
            out = np.empty((n, c), np.int8)
            capi.check(L.npuq_mean(C.byref(p), ptr(x), x.size, ptr(out), out.size, 0))
            np.testing.assert_array_equal(out, npuq.ops.mean(x, **kw).reshape(n, c))
        # upsample, shuffle, slice, pad
        fh, fw = (int(v) for v in rng.integers(1, 4, 2))
        for mode in ("nearest", "bilinear"):
            zp = int(rng.integers(-128, 128))
            expected = npuq.ops.upsample(x, (fh, fw), mode=mode, zero_point=zp)
            out = np.empty(expected.shape, np.int8)
            capi.check(
                L.npuq_upsample(ptr(x), n, h, w, c, x.size, fh, fw, int(mode == "bilinear"), zp, ptr(out), out.size, 0)
            )
            np.testing.assert_array_equal(out, expected)
        groups = int(rng.choice([g for g in range(1, c + 1) if c % g == 0]))
        out = np.empty_like(x)
        capi.check(L.npuq_channel_shuffle(ptr(x), n * h * w, c, groups, ptr(out), x.size, 0))
        np.testing.assert_array_equal(out, npuq.ops.channel_shuffle(x, groups))
        begin = int(rng.integers(0, c))
        end = int(rng.integers(begin + 1, c + 1))
        out = np.empty((n, h, w, end - begin), np.int8)
        capi.check(L.npuq_channel_slice(ptr(x), n * h * w, c, begin, end, ptr(out), out.size))
        np.testing.assert_array_equal(out, npuq.ops.channel_slice(x, begin, end))
        pads = [int(v) for v in rng.integers(0, 3, 4)]
        value = int(rng.integers(-128, 128))
        expected = npuq.ops.pad(x, tuple(pads), value)
        out = np.empty(expected.shape, np.int8)
        capi.check(L.npuq_pad(ptr(x), n, h, w, c, x.size, *pads, value, ptr(out), out.size))
        np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------------------- versions, errors


def test_versions():
    assert L.npuq_abi_version() == npuq.capi.abi_version()
    assert L.npuq_arithmetic_version() == npuq.ARITHMETIC_VERSION
    assert L.npuq_version().decode() == npuq.__version__
    assert L.npuq_isa().decode() == npuq.cpu_features()["active"]
    capi.check(L.npuq_check_abi(L.npuq_abi_version()))
    assert L.npuq_last_error() == b""


def test_abi_mismatch_is_a_status_with_both_versions():
    status = L.npuq_check_abi(L.npuq_abi_version() + 1)
    assert capi.STATUS[status] == "NPUQ_VERSION_MISMATCH"
    msg = L.npuq_last_error().decode()
    assert f"ABI version {L.npuq_abi_version() + 1}" in msg and f"ABI version {L.npuq_abi_version()}" in msg
    assert L.npuq_status_name(status) == b"NPUQ_VERSION_MISMATCH"
    assert L.npuq_status_name(99) == b"unknown npuq_status"


def _status_and_message(status):
    return capi.STATUS[status], L.npuq_last_error().decode()


def test_bad_arguments_are_statuses_naming_the_argument():
    rng = np.random.default_rng(0)
    wt = rng.integers(-127, 128, (4, 3, 3, 2), dtype=np.int8)
    x = rng.integers(-128, 128, (1, 5, 5, 2), dtype=np.int8)
    out = np.empty((1, 5, 5, 4), np.int8)
    good, _keep = _conv_struct(wt, dict(padding=1), dict(multiplier=1 << 30, exponent=-4))

    x_ptr, w_ptr, out_ptr = ptr(x), ptr(wt), ptr(out)

    def conv(p=good, xp=x_ptr, xc=x.size, wp=w_ptr, wc=wt.size, op=out_ptr, oc=out.size, threads=0, batch=1):
        params = C.byref(p) if p is not None else None
        return _status_and_message(L.npuq_conv2d(params, xp, batch, 5, 5, xc, wp, wc, None, 0, op, oc, threads))

    assert conv() == ("NPUQ_OK", "")
    cases = {
        "params is NULL": dict(p=None),
        "x is NULL": dict(xp=None),
        "weight is NULL": dict(wp=None),
        "out is NULL": dict(op=None),
        "x_count is 49": dict(xc=49),
        "weight_count is 71": dict(wc=71),
        "out_count is 99": dict(oc=99),
        "threads": dict(threads=-1),
        "batch": dict(batch=0),
    }
    for words, kw in cases.items():
        status, msg = conv(**kw)
        assert status == "NPUQ_INVALID_ARGUMENT", (words, msg)
        assert msg.startswith("npuq_conv2d: ") and words in msg, (words, msg)
    bad_weight = wt.copy()
    bad_weight[0, 0, 0, 0] = -128
    status, msg = conv(wp=ptr(bad_weight))
    assert status == "NPUQ_INVALID_ARGUMENT" and "-127" in msg
    for field, value, words in [
        ("groups", 3, "groups"),
        ("stride_h", 0, "stride"),
        ("pad_top", 3, "pad"),
        ("input_zero_point", 128, "zero"),
        ("overflow", 7, "overflow must be"),
    ]:
        p, _k = _conv_struct(wt, dict(padding=1), dict(multiplier=1 << 30, exponent=-4))
        setattr(p, field, value)
        status, msg = conv(p=p)
        assert status == "NPUQ_INVALID_ARGUMENT" and words in msg, (field, msg)
    for field, value, words in [
        ("param_count", 3, "param_count"),
        ("rounding", 5, "rounding"),
        ("act_max", -129, "act_max"),
        ("multiplier", None, "requant.multiplier is NULL"),
    ]:
        p, _k = _conv_struct(wt, dict(padding=1), dict(multiplier=1 << 30, exponent=-4))
        setattr(p.requant, field, value)
        status, msg = conv(p=p)
        assert status == "NPUQ_INVALID_ARGUMENT" and words in msg, (field, msg)


def test_accumulator_overflow_is_its_own_status():
    wt = np.full((1, 1, 1, 3000), 127, np.int8)
    x = np.full((1, 1, 1, 3000), 127, np.int8)
    geometry = dict(input_zero_point=-128)
    out = np.empty((1, 1, 1, 1), np.int8)
    p, _keep = _conv_struct(wt, geometry, dict(multiplier=1 << 30, exponent=0))
    bias = np.array([2**31 - 1], np.int32)
    status = L.npuq_conv2d(
        C.byref(p), ptr(x), 1, 1, 1, x.size, ptr(wt), wt.size, ptr(bias, C.c_int32), 1, ptr(out), 1, 0
    )
    assert capi.STATUS[status] == "NPUQ_ACCUMULATOR_OVERFLOW"
    assert "conv2d" in L.npuq_last_error().decode()


def test_other_ops_reject_null_and_wrong_sizes():
    x = np.zeros(16, np.int8)
    table = np.zeros(256, np.int8)
    out = np.zeros(16, np.int8)
    assert _status_and_message(L.npuq_lut(None, 16, ptr(table), ptr(out), 0))[0] == "NPUQ_INVALID_ARGUMENT"
    assert "table is NULL" in _status_and_message(L.npuq_lut(ptr(x), 16, None, ptr(out), 0))[1]
    assert "count" in _status_and_message(L.npuq_lut(ptr(x), 0, ptr(table), ptr(out), 0))[1]
    status, msg = _status_and_message(L.npuq_channel_slice(ptr(x), 4, 4, 3, 2, ptr(out), 16))
    assert status == "NPUQ_INVALID_ARGUMENT" and "begin < end" in msg
    status, msg = _status_and_message(L.npuq_channel_slice(ptr(x), 4, 4, 0, 2, ptr(out), 16))
    assert status == "NPUQ_INVALID_ARGUMENT" and "out_count is 16" in msg
    status, msg = _status_and_message(L.npuq_pad(ptr(x), 1, 2, 2, 4, 16, -1, 0, 0, 0, 0, ptr(out), 16))
    assert status == "NPUQ_INVALID_ARGUMENT" and "padding" in msg
    big = 2**62
    status, msg = _status_and_message(L.npuq_channel_shuffle(ptr(x), big, big, 1, ptr(out), 16, 0))
    assert status == "NPUQ_INVALID_ARGUMENT" and "2^63" in msg
    m, e = C.c_int32(), C.c_int32()
    for real in (0.0, -1.0, float("nan"), float("inf"), 2.0**40):
        assert capi.STATUS[L.npuq_quantize_multiplier(real, C.byref(m), C.byref(e))] == "NPUQ_INVALID_ARGUMENT"
    capi.check(L.npuq_quantize_multiplier(0.3, C.byref(m), C.byref(e)))
    assert (m.value, e.value) == npuq.quantize_multiplier(0.3)
    assert capi.STATUS[L.npuq_requantize_one(5, 1 << 30, 0, 16, 0, -128, 127, 0, C.byref(C.c_int8()))] == (
        "NPUQ_INVALID_ARGUMENT"
    )
    arr = (capi.ConcatInput * 2)(
        capi.ConcatInput(ptr(x), 16, 4, 0, 1 << 30, 1), capi.ConcatInput(None, 16, 4, 0, 1 << 30, 1)
    )
    status, msg = _status_and_message(L.npuq_concat(arr, 2, 4, 0, 0, ptr(out), 32, 0))
    assert status == "NPUQ_INVALID_ARGUMENT" and "inputs[1].data is NULL" in msg


def test_error_messages_are_per_thread():
    seen = {}

    def fail(i):
        L.npuq_lut(None, 1 + i, None, None, 0)
        seen[i] = L.npuq_last_error().decode()

    def succeed():
        x = np.zeros(4, np.int8)
        L.npuq_lut(ptr(x), 4, ptr(np.zeros(256, np.int8)), ptr(x), 1)
        seen["ok"] = L.npuq_last_error().decode()

    threads = [threading.Thread(target=fail, args=(i,)) for i in range(4)] + [threading.Thread(target=succeed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["ok"] == ""
    assert all("x is NULL" in seen[i] for i in range(4))


@pytest.mark.parametrize("null_free", ["npuq_conv2d_plan_free"])
def test_free_of_null_is_a_no_op(null_free):
    getattr(L, null_free)(None)
