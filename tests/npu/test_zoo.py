"""The common vision model zoo end to end: torchvision architectures (random weights, randomized batch-norm
statistics) are quantized (WESS W8A8), compiled, emulated, and their golden vectors exported and verified.

Per model: the graph has no float op; the emulator's every value equals the independent numpy interpreter
(tests/support/npu_reference.py) and the quantization simulation's integers; a golden vector set of the run
passes its own check, and the emulator's dump of the same images verifies PASS against it.

The small models run in the default test run, all of them with ``-m slow``.
"""

from __future__ import annotations

import collections
import functools

import numpy as np
import pytest
import torch

import npuq
from npuq.models.zoo import ZOO as ZOO_MODELS
from npuq.models.zoo import zoo_model
from npuq.npu import Emulator, vectors
from support import npu_reference as NR
from support.torchvision_compat import torchvision_models

# model -> the op kinds of format 2 (and ceil-mode pooling) it must exercise
ZOO = {
    "mobilenet_v3_small": {"lut", "mul"},
    "squeezenet1_1": {"concat", "max_pool2d"},
    "shufflenet_v2_x0_5": {"concat", "channel_shuffle", "slice"},
    "mobilenet_v3_large": {"lut", "mul"},
    "efficientnet_b0": {"lut", "mul"},
    "resnet50": {"add", "max_pool2d"},
    "densenet121": {"concat", "avg_pool2d"},
}
SMALL = ("mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5")
assert set(ZOO) == set(ZOO_MODELS)
CASES = [pytest.param(m, id=m) if m in SMALL else pytest.param(m, id=m, marks=pytest.mark.slow) for m in ZOO]


@functools.lru_cache(maxsize=None)
def quantized(name: str):
    torchvision_models()  # skips without torchvision
    model = zoo_model(name, seed=3)
    g = torch.Generator().manual_seed(4)
    calib = [torch.randn(2, 3, 224, 224, generator=g) for _ in range(2)]
    qm = npuq.quantize(model, calib, weights="wess", bits=8, activations="mse")
    return qm, npuq.compile(qm, name=name), torch.randn(2, 3, 224, 224, generator=g)


@pytest.mark.parametrize("name", CASES)
def test_zoo_model_compiles_emulates_bit_exactly_and_verifies(name, tmp_path):
    qm, program, x = quantized(name)
    assert not qm.graph.unsupported()
    kinds = collections.Counter(op.kind for op in program.ops)
    assert ZOO[name] <= set(kinds), f"{name}: expected {ZOO[name]} among {dict(kinds)}"
    if name == "squeezenet1_1":
        assert all(op.attrs["ceil_mode"] for op in program.ops if op.kind == "max_pool2d")

    out, values = Emulator(program).run(x, capture=True)
    reference = NR.run_program(program, x.numpy())
    for key, want in reference.items():
        np.testing.assert_array_equal(values[key], want, err_msg=f"{name}: value '{key}' differs from numpy")
    _, env = qm.run_integer(x, capture=True)
    for op in program.ops:
        sim = env[op.name].numpy()
        sim = sim.transpose(0, 2, 3, 1) if sim.ndim == 4 else sim
        np.testing.assert_array_equal(values[op.name], sim, err_msg=f"{name}: op '{op.name}' differs from simulation")
    for op in program.ops:  # a constant value would make the equality above weak
        if op.kind in ("conv2d", "fully_connected", "mul", "concat", "lut"):
            assert len(np.unique(values[op.name])) > 2, f"{name}: '{op.name}' is (nearly) constant"

    manifest = vectors.export_vectors(program, x[:1], tmp_path / "golden")
    assert len(manifest["ops"]) == len(program.ops)
    vectors.check_vectors(tmp_path / "golden")
    vectors.write_dump(program, x[:1], tmp_path / "dump", fmt=("bin", "hex", "npy"))
    result = vectors.verify(tmp_path / "golden", tmp_path / "dump")
    assert result.passed and result.exit_code == 0 and not result.missing, result.status
