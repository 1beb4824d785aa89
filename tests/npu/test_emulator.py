"""The compiler and the emulator: a compiled program computes exactly the quantization simulation's
integers (the whole Fashion-MNIST test set), the compiler refuses what the NPU cannot run, the
emulator's API and the `npuq compile` / `npuq run` commands behave, and no torch is needed to run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import npuq
from npuq.cli import main as cli_main
from npuq.data.fashion_mnist import fashion_mnist_loader, fashion_mnist_tensors
from npuq.models.checkpoints import load_checkpoint
from npuq.npu import CompileError, Emulator, Program, ProgramError, load_program


def _quantize_checkpoint(name: str, rounding: str = "double", weights: str = "wess", bits: int = 8):
    model, _ = load_checkpoint(name)
    calib = fashion_mnist_loader("train", batch_size=256, shuffle=True, seed=1234, limit=512)
    return npuq.quantize(model, calib, weights=weights, bits=bits, activations="mse", rounding=rounding)


@pytest.fixture(scope="module")
def v2():
    qm = _quantize_checkpoint("mobilenet_v2_w0.5_sgd")
    return qm, npuq.compile(qm, name="v2")


def _nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    a = t.numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def _assert_same_as_simulation(qm, program, x):
    """Every op's int8 values equal the simulation's (flatten excepted: its element order differs)."""
    emu = Emulator(program)
    out, values = emu.run(x, capture=True)
    sim_out, sim = qm.run_integer(x, capture=True)
    np.testing.assert_array_equal(out, sim_out.numpy())
    for op in program.ops:
        if op.kind != "flatten":
            np.testing.assert_array_equal(values[op.name], _nchw_to_nhwc(sim[op.name]), err_msg=op.name)


# --------------------------------------------------------------------------------- whole test set
def _full_test_set_check(qm, program):
    x, y = fashion_mnist_tensors("test")
    emu = Emulator(program)
    q = emu.run(x)
    sim = torch.cat([qm.run_integer(x[i : i + 2000]) for i in range(0, len(x), 2000)]).numpy()
    np.testing.assert_array_equal(q, sim)  # every logit of every image, not only the top-1
    emu_top1 = float((q.argmax(1) == y.numpy()).mean())
    sim_top1 = float((sim.argmax(1) == y.numpy()).mean())
    assert emu_top1 == sim_top1
    assert emu.evaluate((x, y))["accuracy"] == emu_top1
    assert emu_top1 > 0.85  # the trained network, not a degenerate one


def test_emulator_equals_simulation_on_the_whole_test_set(v2):
    _full_test_set_check(*v2)


@pytest.mark.slow
@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize(
    "name", ["mobilenet_v1_w0.5_sgd", "mobilenet_v2_w0.5_sgd", "mobilenet_v1_w0.5_adam-l2", "mobilenet_v2_w0.5_adam-l2"]
)
def test_emulator_equals_simulation_on_every_checkpoint(name, rounding):
    qm = _quantize_checkpoint(name, rounding)
    _full_test_set_check(qm, npuq.compile(qm))


# --------------------------------------------------------------------------------- compiler
class FlattenNet(nn.Module):
    """A fully-connected layer behind a flatten of a 4x4 map: the compiler must permute its columns."""

    def __init__(self, pool: bool = True):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 6, 3, 2, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else nn.Identity()
        self.fc = nn.Linear(6 * 7 * 7 if pool else 6 * 14 * 14, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def _calib(n=2, batch=16, shape=(1, 28, 28)):
    g = torch.Generator().manual_seed(3)
    return [torch.randn((batch, *shape), generator=g) for _ in range(n)]


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_fully_connected_behind_a_spatial_flatten(rounding):
    torch.manual_seed(0)
    model = FlattenNet().eval()
    qm = npuq.quantize(model, _calib(), weights="per_channel", activations="minmax", rounding=rounding)
    program = npuq.compile(qm)
    assert [o.kind for o in program.ops] == ["conv2d", "max_pool2d", "flatten", "fully_connected"]
    _assert_same_as_simulation(qm, program, _calib(1, 8)[0])


def test_compile_refuses_weight_only_models():
    torch.manual_seed(0)
    qm = npuq.quantize(FlattenNet().eval(), _calib(), weights="wess", activations=None)
    with pytest.raises(CompileError, match="weight-only"):
        npuq.compile(qm)


def test_compile_refuses_float_ops_and_names_them():
    class Elu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.act = nn.ELU()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.act(self.conv(x)), 1), 1))

    qm = npuq.quantize(Elu().eval(), _calib(), activations="minmax", unsupported="float")
    with pytest.raises(CompileError, match=r"act \(ELU"):
        npuq.compile(qm)


def test_compile_refuses_a_spatial_flatten_that_no_linear_reads():
    class Out(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, 2)

        def forward(self, x):
            return torch.flatten(self.conv(x), 1)

    qm = npuq.quantize(Out().eval(), _calib(), activations="minmax")
    with pytest.raises(CompileError, match=r"\(H, W, C\)"):
        npuq.compile(qm)


def test_compile_takes_only_quantized_models():
    with pytest.raises(TypeError, match="QuantizedModel"):
        npuq.compile(nn.Linear(2, 2))


def test_program_records_the_quantization(v2):
    qm, program = v2
    assert program.rounding == "double" and program.overflow == "raise"
    assert program.info["quantization"]["weights"] == "wess"
    assert program.input.shape == (28, 28, 1)
    layers = program.layers()
    assert len(layers) == len(qm.layers)
    # WESS: one multiplier per layer, 4-bit shifts per channel, some of them non-zero on depthwise layers
    assert all(op.tensors["multiplier"].shape == (1,) for op in layers)
    assert max(int(op.tensors["shift"].max()) for op in layers) > 0


# --------------------------------------------------------------------------------- emulator API
def test_emulator_api_views_agree(v2):
    _, program = v2
    emu = Emulator(program, threads=1, batch_size=5)
    x, y = fashion_mnist_tensors("test")
    x, y = x[:23], y[:23]
    q = emu.run(x)
    assert q.dtype == np.int8 and q.shape == (23, 10)
    xq = emu.quantize_input(x)
    assert xq.dtype == np.int8 and xq.shape == (23, 28, 28, 1)
    np.testing.assert_array_equal(emu.run(xq), q)  # int8 NHWC input
    np.testing.assert_array_equal(emu.run(x.numpy().transpose(0, 2, 3, 1), layout="NHWC"), q)
    out = program.output_op
    np.testing.assert_array_equal(emu.logits(x), (q.astype(np.float32) - out.zero_point) * np.float32(out.scale))
    np.testing.assert_array_equal(emu.predict(x), q.argmax(1))
    loader = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 23, 10)]
    assert emu.evaluate(loader) == emu.evaluate((x, y))
    assert emu.evaluate((x, y))["total"] == 23


def test_emulator_bad_input(v2):
    _, program = v2
    emu = Emulator(program)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        emu.run(torch.zeros(2, 28, 28, 1))
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        emu.run(np.zeros((2, 1, 28, 28), np.int8))
    with pytest.raises(TypeError, match="int16"):
        emu.run(np.zeros((2, 28, 28, 1), np.int16))
    with pytest.raises(ValueError, match="NaN"):
        emu.run(torch.full((1, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="size 0"):
        emu.run(np.zeros((0, 28, 28, 1), np.int8))
    with pytest.raises(TypeError, match="list"):
        emu.run([[0]])
    with pytest.raises(ValueError, match="batch_size"):
        Emulator(program, batch_size=0)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        Emulator(program, device="gpu")  # device="cuda" without a GPU: tests/ops/test_cuda_ops.py
    with pytest.raises(ValueError, match="labels"):
        emu.evaluate((torch.zeros(3, 1, 28, 28), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ProgramError, match="no such program file"):
        Emulator("/nonexistent/x.npuq")


def test_program_file_runs_without_torch(v2, tmp_path):
    """The hardware team loads and runs programs with numpy alone."""
    _, program = v2
    path = program.save(tmp_path / "v2.npuq")
    x = Emulator(program).quantize_input(fashion_mnist_tensors("test")[0][:4])
    np.save(tmp_path / "x.npy", x)
    expected = Emulator(program).run(x)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, npuq\n"
        f"out = npuq.Emulator(npuq.load_program({str(path)!r})).run(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, out)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


# --------------------------------------------------------------------------------- command line
def test_cli_compile_and_run(tmp_path, capsys):
    path = tmp_path / "v1.npuq"
    assert (
        cli_main(
            [
                "compile",
                "--model",
                "mobilenet_v1_w0.5_sgd",
                "-o",
                str(path),
                "--calib-batches",
                "2",
                "--rounding",
                "single",
            ]
        )
        == 0
    )
    program = load_program(path)
    assert program.rounding == "single" and program.model == "mobilenet_v1_w0.5_sgd"
    out_json = tmp_path / "run.json"
    assert cli_main(["run", str(path), "--limit", "300", "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    x, y = fashion_mnist_tensors("test")
    expected = float((Emulator(program).predict(x[:300]) == y[:300].numpy()).mean())
    assert result["accuracy"] == expected and result["total"] == 300
    assert "top-1" in capsys.readouterr().out

    # .npy images and labels instead of Fashion-MNIST
    np.save(tmp_path / "img.npy", x[:50].numpy())
    np.save(tmp_path / "lab.npy", y[:50].numpy())
    assert (
        cli_main(
            [
                "run",
                str(path),
                "--images",
                str(tmp_path / "img.npy"),
                "--labels",
                str(tmp_path / "lab.npy"),
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    assert json.loads(out_json.read_text())["total"] == 50
    np.save(tmp_path / "lab.npy", y[:49].numpy())
    assert (
        cli_main(["run", str(path), "--images", str(tmp_path / "img.npy"), "--labels", str(tmp_path / "lab.npy")]) == 2
    )
    assert "npuq run: 50 images but 49 labels" in capsys.readouterr().err


def test_cli_run_rejects_a_broken_program(tmp_path, capsys):
    bad = tmp_path / "bad.npuq"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert cli_main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "header size" in err


def test_program_type():
    assert issubclass(ProgramError, ValueError)
    assert Program.__module__ == "npuq.npu.program"
