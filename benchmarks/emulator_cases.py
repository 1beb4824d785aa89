"""Shared setup of the emulator speed benchmark: the model, the data and the three callables timed.

Used by ``benchmarks/test_emulator_speed.py`` (pytest-benchmark) and ``scripts/bench_emulator.py``
(one run, all three, JSON), so that both time exactly the same thing.

One network, MobileNetV2 width 0.5 trained on Fashion-MNIST (checkpoint ``mobilenet_v2_w0.5_sgd``),
quantized once with ``npuq.quantize(model, calib, weights="wess", bits=8, activations="mse")`` on 8
batches of 256 training images, then run three ways on float NCHW test images:

* ``emulator``: ``npuq.Emulator(npuq.compile(qm)).run(x)``, float input quantized by the emulator
  (so the time is end to end: float images in, int8 logits out); ``batch_size`` images per native call.
* ``simulation``: ``qm.run_integer(x)``, the quantization simulation in torch integer arithmetic
  (the same integers as the emulator), fed ``batch_size`` images per call.
* ``fbgemm``: torch's own int8 model of the same float network (``fbgemm_baseline.convert_int8``: FX
  graph mode, the engine's default qconfig mapping, calibrated on the same 2048 images), on
  torch's fbgemm engine, ``batch_size`` images per call, under ``torch.inference_mode``.

All three use the same thread count: ``torch.set_num_threads(T)``, ``npuq.set_num_threads(T)`` and
``Emulator(threads=T)``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch

import fbgemm_baseline

CHECKPOINT = "mobilenet_v2_w0.5_sgd"
CALIBRATION = dict(batch_size=256, shuffle=True, seed=1234, limit=8 * 256)
QUANTIZE = dict(weights="wess", bits=8, activations="mse")
IMPLEMENTATIONS = ("emulator", "simulation", "fbgemm")
# Images per call of each backend (scripts/bench_emulator.py --sweep measures the alternatives). Beyond a
# few hundred images the activations of a call no longer fit in the caches and all of them slow down.
DEFAULT_BATCH = {"emulator": 500, "simulation": 100, "fbgemm": 1000}
DESCRIPTION = {
    "emulator": "npuq.Emulator(program).run(float images): input quantization + native int8 kernels",
    "simulation": "QuantizedModel.run_integer(float images): torch integer-arithmetic simulation",
    "fbgemm": "torch.ao.quantization int8 model (convert_fx), quantized engine {engine}",
}


@dataclasses.dataclass
class Setup:
    """Everything the benchmark times, built once (see :func:`build`)."""

    threads: int
    model: torch.nn.Module          # the float network
    meta: dict
    qmodel: object                  # npuq.QuantizedModel
    program: object                 # npuq.Program
    emulator: object                # npuq.Emulator
    fbgemm: torch.nn.Module         # torch's int8 model
    engine: str                     # torch.backends.quantized.engine used
    fbgemm_mode: str                # "fx" or "eager"
    x: torch.Tensor                 # test images, float NCHW (10000, 1, 28, 28)
    y: torch.Tensor                 # test labels
    batch: dict[str, int]
    setup_s: dict[str, float]

    def runner(self, impl: str) -> Callable[[torch.Tensor], object]:
        """The callable timed for ``impl``: images -> outputs, in chunks of ``self.batch[impl]`` images."""
        if impl == "emulator":
            emu = self.emulator
            emu.batch_size = self.batch["emulator"]
            return emu.run
        if impl == "simulation":
            return _chunked(self.qmodel.run_integer, self.batch["simulation"])
        if impl == "fbgemm":
            return _chunked(self.fbgemm, self.batch["fbgemm"])
        raise ValueError(f"unknown implementation {impl!r}; one of {', '.join(IMPLEMENTATIONS)}")


def _chunked(fn, batch: int):
    def run(x: torch.Tensor):
        with torch.inference_mode():
            outs = [fn(x[lo:lo + batch]) for lo in range(0, x.shape[0], batch)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    return run


def configure(threads: int, engine: str = "fbgemm") -> str:
    """Same thread count for torch and npuq; ``engine`` (or x86) as torch's quantized engine. Returns it."""
    import npuq

    torch.set_num_threads(threads)
    npuq.set_num_threads(threads)
    return fbgemm_baseline.select_engine(engine)


def build(threads: int, *, batch: dict[str, int] | None = None, engine: str = "fbgemm",
          fbgemm_mode: str = "fx", log: Callable[[str], None] = lambda s: None) -> Setup:
    """Load, quantize, compile and convert (about a minute on two cores, most of it npuq.quantize)."""
    import npuq
    from npuq.data.fashion_mnist import fashion_mnist_loader, fashion_mnist_tensors
    from npuq.models.checkpoints import load_checkpoint

    engine = configure(threads, engine)
    setup_s = {}
    model, meta = load_checkpoint(CHECKPOINT)
    model.eval()
    x, y = fashion_mnist_tensors("test")

    t = time.perf_counter()
    log(f"quantizing {CHECKPOINT} with npuq ({', '.join(f'{k}={v}' for k, v in QUANTIZE.items())}) ...")
    calib = fashion_mnist_loader("train", **CALIBRATION)
    qmodel = npuq.quantize(model, calib, **QUANTIZE)
    setup_s["npuq_quantize"] = time.perf_counter() - t
    t = time.perf_counter()
    program = npuq.compile(qmodel)
    emulator = npuq.Emulator(program, threads=threads)
    setup_s["npuq_compile"] = time.perf_counter() - t

    t = time.perf_counter()
    log(f"converting to torch int8 ({engine}, {fbgemm_mode}) ...")
    calib = fashion_mnist_loader("train", **CALIBRATION)
    fbgemm, engine, used_mode = fbgemm_baseline.convert_int8(model, calib, x[:1], engine=engine, mode=fbgemm_mode)
    setup_s["torch_convert"] = time.perf_counter() - t

    return Setup(threads=threads, model=model, meta=meta, qmodel=qmodel, program=program, emulator=emulator,
                 fbgemm=fbgemm, engine=engine, fbgemm_mode=used_mode, x=x, y=y,
                 batch={**DEFAULT_BATCH, **(batch or {})}, setup_s=setup_s)


def top1(impl: str, out) -> np.ndarray:
    """Predicted classes from an implementation's output (ties: the lowest index, for all three)."""
    if isinstance(out, torch.Tensor):
        out = out.detach().float().numpy() if impl == "fbgemm" else out.numpy()
    out = np.asarray(out)
    return out.reshape(out.shape[0], -1).argmax(axis=1)


def same_integers(emulator_out: np.ndarray, simulation_out: torch.Tensor) -> bool:
    """Whether the emulator's int8 outputs equal the simulation's integers (int64, same layout)."""
    sim = simulation_out.numpy()
    return emulator_out.shape == sim.shape and bool(np.array_equal(emulator_out.astype(np.int64), sim))


__all__ = ["CALIBRATION", "CHECKPOINT", "DEFAULT_BATCH", "DESCRIPTION", "IMPLEMENTATIONS", "QUANTIZE", "Setup",
           "build", "configure", "same_integers", "top1"]
