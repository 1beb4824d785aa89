"""The CUDA kernels (csrc/cuda) against the independent numpy oracle, bit for bit, over the same
hypothesis cases as the CPU kernels (shapes, strides, padding, dilation, groups, zero points, both
rounding modes, channel shifts, the overflow policies), for both GEMM engines (int8 tensor cores and
dp4a); whole programs on the GPU against the CPU emulator; torch CUDA tensors in place; bad input.

Tests marked ``gpu`` need a CUDA GPU and a build with the CUDA kernels; elsewhere they are skipped with
the reason. The tests above the GPU section run everywhere: what can be checked without a device.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuq
from npuq import _C, _cuda
from npuq.models.zoo import randomize_batch_norms as _randomize_batch_norms
from support import reference_numpy as R
from support.helpers import ROUNDING_STRATEGY, assert_same, scaled_examples
from support.op_cases import (
    add_case,
    conv_case,  # the CPU kernels' hypothesis cases, reused as they are
    fc_case,
    pool_case,
)
from support.small_networks import SmallNet, small_networks

INFO = _cuda.info()
HAS_GPU = bool(INFO["built"]) and INFO["devices"] > 0
WHY_NO_GPU = (
    "npuq was built without the CUDA kernels" if not INFO["built"] else f"no CUDA GPU is available ({INFO['reason']})"
)
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)]
ENGINES = ("mma", "dp4a")


class FakeDeviceArray:
    """An object with ``__cuda_array_interface__`` whose pointer is never dereferenced: the checks that
    happen before any CUDA call."""

    def __init__(self, shape, typestr="|i1", strides=None, ptr=0x10000):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape),
            "typestr": typestr,
            "data": (ptr, False),
            "version": 3,
            "strides": strides,
        }


def _conv(channels=4, out=4):
    w = np.ones((out, 1, 1, channels), np.int8)
    return npuq.ops.Conv2d(w, multiplier=2**30, exponent=0)


# --------------------------------------------------------------------------------- without a GPU
def test_cuda_info_says_what_this_build_and_machine_have():
    info = _cuda.info()
    assert {"built", "devices", "reason"} <= set(info)
    assert info["built"] == bool(_C.BUILT_WITH_CUDA)
    if info["devices"] == 0:
        assert info["reason"], "no device, but no reason given"


@pytest.mark.skipif(not INFO["built"], reason="npuq was built without the CUDA kernels")
def test_the_build_names_the_gpu_architectures_it_has_code_for():
    text = INFO["architectures_text"]
    for item in INFO["architectures"].split(","):
        number, _, kind = item.partition("-")
        if not number.isdigit():
            assert repr(item) in text  # native / all: named as given
            continue
        assert (f"sm_{number}" in text) == (kind != "virtual"), item
        assert (f"compute_{number}" in text) == (kind != "real"), item
    assert len(INFO["kernel_image_errors"]) == INFO["devices"]


def _info_with_one_gpu(error):
    return dict(
        INFO,
        built=True,
        devices=1,
        reason="",
        names=["Old GPU"],
        capabilities=[(3, 7)],
        architectures="75-real,80-real,120",
        architectures_text="machine code for sm_75, sm_80, sm_120, PTX for compute_120",
        kernel_image_errors=[error],
    )


def test_a_gpu_outside_the_built_architectures_is_refused_with_what_to_do(monkeypatch):
    info = _info_with_one_gpu("cudaErrorNoKernelImageForDevice")
    reason = _cuda.unusable_reason(info, 0)
    assert "Old GPU, compute capability 3.7" in reason and "cudaErrorNoKernelImageForDevice" in reason
    assert "machine code for sm_75, sm_80, sm_120" in reason and "NPUQ_CUDA_ARCHS=37 pip install" in reason
    monkeypatch.setattr(_cuda, "info", lambda: info)
    with pytest.raises(RuntimeError, match="cannot run npuq's CUDA kernels"):
        _cuda.require(0)
    with pytest.raises(RuntimeError, match="compute capability 3.7"):
        npuq.ops.Conv2d(np.ones((4, 1, 1, 4), np.int8), multiplier=2**30, exponent=0).cuda_plan(0)


def test_a_gpu_the_build_covers_is_accepted(monkeypatch):
    info = _info_with_one_gpu(None)
    assert _cuda.unusable_reason(info, 0) is None
    monkeypatch.setattr(_cuda, "info", lambda: info)
    assert _cuda.require(0) == 0


def test_the_cuda_sources_are_compiled_where_nvcc_is():
    """CI has no GPU, but where it has nvcc the CUDA part must build (NPUQ_CUDA=AUTO)."""
    import os
    import shutil

    nvcc = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)
    if nvcc is None:
        pytest.skip("no nvcc on this machine: the CUDA sources cannot be compiled here")
    if os.environ.get("NPUQ_CUDA", "AUTO").upper() == "OFF":
        pytest.skip("NPUQ_CUDA=OFF")
    assert _C.BUILT_WITH_CUDA, f"{nvcc} is present but npuq was built without its CUDA kernels"


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "tpu", 3])
def test_emulator_rejects_unknown_devices(device):
    prog = _tiny_program()
    with pytest.raises(ValueError, match="device must be"):
        npuq.npu.Emulator(prog, device=device)


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: the error for a missing one cannot be shown")
def test_cuda_without_a_gpu_is_a_clear_error():
    prog = _tiny_program()
    with pytest.raises(RuntimeError, match="CUDA kernels|no CUDA GPU"):
        npuq.npu.Emulator(prog, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA kernels|no CUDA GPU"):
        _conv()(FakeDeviceArray((1, 2, 2, 4)))
    with pytest.raises(RuntimeError, match="CUDA kernels|no CUDA GPU"):
        _cuda.to_device(np.zeros(4, np.int8), 0)


@pytest.mark.parametrize(
    "case, error, match",
    [
        (dict(shape=(1, 2, 2, 4), typestr="<i4"), TypeError, "dtype int8"),
        (dict(shape=(1, 2, 2, 4), strides=(32, 16, 8, 2)), ValueError, "non-contiguous"),
        (dict(shape=(0, 2, 2, 4)), ValueError, "empty"),
        (dict(shape=(2, 4)), ValueError, "4 dimensions"),
    ],
)
def test_device_arrays_are_checked_before_any_cuda_call(case, error, match):
    with pytest.raises(error, match=match):
        _conv()(FakeDeviceArray(**case))


def test_device_and_host_arrays_do_not_mix_in_add():
    params = dict(npuq.ops.add_params(0.1, 0.1, 0.2), a_zero_point=0, b_zero_point=0, output_zero_point=0)
    with pytest.raises(TypeError, match="same CUDA device"):
        npuq.ops.add(FakeDeviceArray((1, 2, 2, 4)), np.zeros((1, 2, 2, 4), np.int8), **params)
    with pytest.raises(TypeError, match="same CUDA device"):
        npuq.ops.add(np.zeros((1, 2, 2, 4), np.int8), FakeDeviceArray((1, 2, 2, 4)), **params)


def test_max_pool2d_on_the_host_matches_the_oracle():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (2, 7, 6, 5), dtype=np.int8)
    got = npuq.ops.max_pool2d(x, 3, stride=2, padding=1)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-128)
    want = np.array(
        [
            [
                [[xp[n, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, c].max() for c in range(5)] for j in range(3)]
                for i in range(4)
            ]
            for n in range(2)
        ],
        np.int8,
    )
    assert_same(want, got, "max_pool2d")


# ------------------------------------------------------------------------------------------ helpers
def _tiny_program():
    """conv -> max pool -> conv + residual add -> average pool -> flatten -> linear, compiled: a program
    with every kind of GPU kernel in it."""
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(2, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.avg = nn.AvgPool2d(2)
            self.fc = nn.Linear(8 * 2 * 2, 10)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv(x)))
            y = y + torch.relu(self.dw(y))
            return self.fc(torch.flatten(self.avg(y), 1))

    torch.manual_seed(5)
    g = torch.Generator().manual_seed(6)
    calib = [torch.randn(8, 4, 5, 5, generator=g)]
    return npuq.compile(npuq.quantize(Net().eval(), calib, activations="minmax"))


def _dev(x):
    return _cuda.to_device(np.ascontiguousarray(x), 0)


def _on_gpu(fn):
    """fn() -> device array, copied back; OverflowError stays an exception class like the oracle's."""
    try:
        return _cuda.to_host(fn())
    except OverflowError:
        return OverflowError


def _same_or_both_overflow(expected, got, what):
    if expected is OverflowError or got is OverflowError:
        assert expected is got, (
            f"{what}: expected {getattr(expected, '__name__', 'values')}, got {getattr(got, '__name__', 'values')}"
        )
        return
    assert_same(expected, got, what)


# ---------------------------------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@scaled_examples(4)
@given(st.data())
def test_conv2d_on_the_gpu_matches_the_oracle(data):
    x, wt, bias, geometry, params = data.draw(conv_case())
    kw = {**geometry, **params}
    try:
        expected = R.conv2d(x, wt, bias, **kw)
    except OverflowError:
        expected = OverflowError
    conv = npuq.ops.Conv2d(wt, bias, **kw)
    xd = _dev(x)
    for engine in ENGINES:
        got = _on_gpu(lambda engine=engine: conv(xd, engine=engine))
        _same_or_both_overflow(expected, got, f"conv2d on the GPU ({conv.cuda_plan(0).path}, {engine}) {conv!r}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@scaled_examples(2)
@given(st.data())
def test_fully_connected_on_the_gpu_matches_the_oracle(data):
    x, w, bias, kw = data.draw(fc_case())
    try:
        expected = R.fully_connected(x, w, bias, **kw)
    except OverflowError:
        expected = OverflowError
    fc = npuq.ops.FullyConnected(w, bias, **kw)
    xd = _dev(x)
    for engine in ENGINES:
        _same_or_both_overflow(
            expected, _on_gpu(lambda engine=engine: fc(xd, engine=engine)), f"fully_connected ({engine})"
        )


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@scaled_examples(2)
@given(st.data())
def test_add_on_the_gpu_matches_the_oracle(data):
    a, b, kw, _ = data.draw(add_case())
    assert_same(R.add(a, b, **kw), _cuda.to_host(npuq.ops.add(_dev(a), _dev(b), **kw)), "add on the GPU")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@scaled_examples(2)
@given(st.data())
def test_pooling_on_the_gpu_matches_the_oracle(data):
    x, kernel, kw = data.draw(pool_case())
    kw_oracle = dict(kw, stride=kernel) if kw["stride"] is None else kw
    xd = _dev(x)
    assert_same(
        R.avg_pool2d(x, kernel, **kw_oracle),
        _cuda.to_host(npuq.ops.avg_pool2d(xd, kernel, **kw)),
        "avg_pool2d on the GPU",
    )
    assert_same(
        npuq.ops.max_pool2d(x, kernel, stride=kw["stride"], padding=kw["padding"]),
        _cuda.to_host(npuq.ops.max_pool2d(xd, kernel, stride=kw["stride"], padding=kw["padding"])),
        "max_pool2d on the GPU",
    )
    lo, hi = kw["act_min"], kw["act_max"]
    assert_same(
        R.global_avg_pool(x, act_min=lo, act_max=hi)
        if hasattr(R, "global_avg_pool")
        else npuq.ops.reference.global_avg_pool(x, act_min=lo, act_max=hi),
        _cuda.to_host(npuq.ops.global_avg_pool(xd, act_min=lo, act_max=hi)),
        "global_avg_pool on the GPU",
    )


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@pytest.mark.parametrize("overflow", ["raise", "saturate", "wrap"])
@pytest.mark.parametrize("shape", [(16, 3, 3, 64), (8, 1, 1, 4096), (32, 3, 3, 1)])
def test_unsafe_channels_take_the_exact_path(overflow, shape):
    """Weights and bias at the edge of int32: the GEMM's modular sum, the exact fix-up and the error."""
    c_out, kh, kw, cig = shape
    groups = 32 if cig == 1 else 1
    rng = np.random.default_rng(sum(shape))
    w = np.where(rng.random(shape) < 0.5, -127, 127).astype(np.int8)
    x = np.where(rng.random((2, 5, 5, cig * groups)) < 0.5, -128, 127).astype(np.int8)
    bias = rng.choice([2**31 - 1, -(2**31), 2**30, 0], c_out).astype(np.int32)
    kw_ = dict(input_zero_point=127, padding=kh // 2, groups=groups, multiplier=2**30, exponent=-20, overflow=overflow)
    conv = npuq.ops.Conv2d(w, bias, **kw_)
    assert conv.cuda_plan(0).unsafe_channels > 0
    try:
        expected = R.conv2d(x, w, bias, **kw_)
        message = None
    except OverflowError:
        expected = OverflowError
        with pytest.raises(OverflowError) as info:
            npuq.ops.reference.conv2d(x, w, bias, **kw_)
        message = str(info.value)
    for engine in ENGINES:
        got = _on_gpu(lambda engine=engine: conv(_dev(x), engine=engine))
        _same_or_both_overflow(expected, got, f"{overflow} {shape} {engine}")
        if message is not None:
            with pytest.raises(OverflowError) as info:
                conv(_dev(x), engine=engine)
            assert str(info.value) == message


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
def test_input_quantization_on_the_gpu_matches_numpy():
    import torch

    prog = _tiny_program()
    emu = npuq.npu.Emulator(prog)
    rng = np.random.default_rng(1)
    s = np.float32(prog.input.scale)
    special = (
        np.array(
            [
                0.5,
                -0.5,
                1.5,
                -1.5,
                2.5,
                np.inf,
                -np.inf,
                1e30,
                -1e30,
                1e-45,
                -0.0,
                255.5,
                -256.5,
                127.49999,
                0.49999997,
            ],
            np.float32,
        )
        * s
    )
    x = rng.normal(0, 3, (4, 4, 5, 5)).astype(np.float32)
    x.reshape(-1)[: special.size] = special
    want = emu.quantize_input(x)
    got = npuq.npu.Emulator(prog, device="cuda")._device_batch(torch.from_numpy(x).cuda(), True, "NCHW")
    assert_same(want, _cuda.to_host(got), "quantize_input on the GPU")
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        npuq.npu.Emulator(prog, device="cuda").run(torch.from_numpy(x).cuda())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
def test_torch_cuda_tensors_in_place_and_out_on_the_same_device():
    import torch

    rng = np.random.default_rng(2)
    w = rng.integers(-127, 128, (16, 3, 3, 8), dtype=np.int8)
    conv = npuq.ops.Conv2d(w, padding=1, multiplier=1518500250, exponent=-8)
    x_nhwc = rng.integers(-128, 128, (2, 9, 7, 8), dtype=np.int8)
    want = conv(x_nhwc)
    xt = torch.from_numpy(x_nhwc).cuda().permute(0, 3, 1, 2)  # (N, C, H, W), channels_last memory
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        got = conv(xt)
    side.synchronize()
    assert got.is_cuda and got.device == xt.device and got.dtype == torch.int8
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_same(want, got.permute(0, 2, 3, 1).cpu().numpy(), "torch CUDA conv")
    with pytest.warns(npuq.LayoutWarning):
        again = conv(xt.contiguous())
    assert_same(want, again.permute(0, 2, 3, 1).cpu().numpy(), "torch CUDA conv from NCHW memory")
    with pytest.raises(ValueError, match="non-contiguous"):
        conv(torch.zeros(2, 8, 9, 14, dtype=torch.int8, device="cuda")[..., ::2])
    with pytest.raises(TypeError, match="int8"):
        conv(xt.float())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
def test_native_calls_refuse_host_pointers_and_short_buffers():
    import torch

    conv = _conv(4, 4)
    plan = conv.cuda_plan(0)
    host = np.zeros((1, 2, 2, 4), np.int8)
    dev = torch.zeros(16, dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match="host memory|not CUDA memory"):
        plan.run(host.ctypes.data, 16, (1, 2, 2, 4), dev.data_ptr(), 16, 0, "auto")
    with pytest.raises(ValueError, match="out holds 8 elements"):
        plan.run(dev.data_ptr(), 16, (1, 2, 2, 4), dev.data_ptr(), 8, 0, "auto")
    with pytest.raises(ValueError, match="null pointer"):
        plan.run(0, 16, (1, 2, 2, 4), dev.data_ptr(), 16, 0, "auto")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
def test_running_out_of_device_memory_is_a_memory_error():
    with pytest.raises(MemoryError, match="smaller batch|out of memory"):
        _C.CudaArray([1 << 40], "int8", 0, 0)  # 1 TiB
    # the device still works afterwards
    assert _cuda.to_host(_cuda.to_device(np.arange(5, dtype=np.int8), 0)).tolist() == list(range(5))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@pytest.mark.parametrize("kind", ["numpy", "CudaArray", "torch int8", "torch float"])
def test_emulator_on_the_gpu_equals_the_cpu_emulator(kind):
    import torch

    prog = _tiny_program()
    rng = np.random.default_rng(4)
    images = rng.normal(0, 1, (37, 4, 5, 5)).astype(np.float32)
    cpu = npuq.npu.Emulator(prog, batch_size=16)
    gpu_emu = npuq.npu.Emulator(prog, batch_size=16, device="cuda")
    want, want_values = cpu.run(images, capture=True)
    xq = cpu.quantize_input(images)
    x = {
        "numpy": lambda: images,
        "CudaArray": lambda: _dev(xq),
        "torch int8": lambda: torch.from_numpy(xq).cuda(),
        "torch float": lambda: torch.from_numpy(images).cuda(),
    }[kind]()
    got, values = gpu_emu.run(x, capture=True)
    if kind.startswith("torch"):
        assert got.is_cuda
    for name, v in want_values.items():
        assert_same(
            v,
            _cuda.to_host(values[name]) if not isinstance(values[name], np.ndarray) else values[name],
            f"{kind}: {name}",
        )
    assert_same(want, _cuda.to_host(got) if not isinstance(got, np.ndarray) else got, kind)
    np.testing.assert_array_equal(cpu.predict(images), gpu_emu.predict(x))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@scaled_examples(1)
@given(st.data())
def test_random_networks_on_the_gpu_equal_the_cpu(data):
    import torch

    spec = data.draw(small_networks())
    rounding = data.draw(ROUNDING_STRATEGY)
    weights = data.draw(st.sampled_from(["per_layer", "per_channel", "wess"]))
    torch.manual_seed(spec["seed"])
    model = _randomize_batch_norms(SmallNet(spec), spec["seed"]).eval()
    g = torch.Generator().manual_seed(spec["seed"])
    shape = (spec["c_in"], spec["h"], spec["w"])
    calib = [torch.randn(4, *shape, generator=g) for _ in range(2)]
    x = 1.5 * torch.randn(5, *shape, generator=g)
    prog = npuq.compile(npuq.quantize(model, calib, weights=weights, activations="minmax", rounding=rounding))
    want, want_values = npuq.npu.Emulator(prog).run(x, capture=True)
    got, values = npuq.npu.Emulator(prog, device="cuda").run(x.cuda(), capture=True)
    for name, v in want_values.items():
        assert_same(v, _cuda.to_host(values[name]), f"random network: {name}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_torchvision_mobilenet_v2_224_on_the_gpu_equals_the_cpu(rounding):
    from test_npu_bitexact import _torchvision_mobilenet_v2, torchvision_program

    _, prog = torchvision_program(rounding)
    _, _, x = _torchvision_mobilenet_v2()
    rng = np.random.default_rng(3)
    images = np.concatenate([x.numpy(), rng.normal(0, 1, (3, 3, 224, 224)).astype(np.float32)])
    want, want_values = npuq.npu.Emulator(prog).run(images, capture=True)
    got, values = npuq.npu.Emulator(prog, device="cuda").run(images, capture=True)
    for name, v in want_values.items():
        assert_same(v, values[name], f"mobilenet_v2 224 ({rounding}): {name}")
    assert_same(want, got, "mobilenet_v2 output")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
@pytest.mark.parametrize("name", ["mobilenet_v1_w0.5_sgd", "mobilenet_v2_w0.5_adam-l2"])
@pytest.mark.parametrize("rounding", ["double", "single"])
def test_trained_fashion_mnist_models_on_the_gpu_equal_the_cpu(name, rounding):
    from npuq.data.fashion_mnist import fashion_mnist_loader, fashion_mnist_tensors
    from npuq.models.checkpoints import load_checkpoint

    model, _ = load_checkpoint(name)
    # calibrated on test images: only the test split is needed, and any calibration gives a program to compare
    calib = fashion_mnist_loader("test", batch_size=256, shuffle=True, seed=1234, limit=512)
    qm = npuq.quantize(model, calib, weights="wess", bits=8, activations="mse", rounding=rounding)
    prog = npuq.compile(qm, name=name)
    x, y = fashion_mnist_tensors("test")
    images, labels = x[:2000].numpy(), y[:2000].numpy()
    cpu = npuq.npu.Emulator(prog)
    gpu_emu = npuq.npu.Emulator(prog, device="cuda", batch_size=700)
    want = cpu.run(images)
    got = gpu_emu.run(images)
    assert_same(want, got, f"{name} ({rounding}) on 2000 test images")
    assert cpu.evaluate((images, labels)) == gpu_emu.evaluate((images, labels))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=WHY_NO_GPU)
def test_this_build_has_code_for_every_visible_gpu():
    """The default architecture list covers the GPUs a machine of the test fleet has (7.5 and newer)."""
    for d, cap in enumerate(INFO["capabilities"]):
        if tuple(cap) >= (7, 5):
            assert INFO["kernel_image_errors"][d] is None, _cuda.unusable_reason(INFO, d)
