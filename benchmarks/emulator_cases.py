"""Shared setup of the emulator speed benchmark: the model, the data and the callables timed.

Used by ``benchmarks/test_emulator_speed.py`` (pytest-benchmark) and ``benchmarks/bench_emulator.py``
(one run, all backends, JSON), so that both time exactly the same thing. Two networks (``MODELS``):

``mobilenet_v2`` (the default): MobileNetV2 width 0.5 trained on Fashion-MNIST (checkpoint
``mobilenet_v2_w0.5_sgd``), quantized once with ``npuq.quantize(model, calib, weights="wess", bits=8,
activations="mse")`` on 8 batches of 256 training images, then run three ways on the 10,000 float NCHW
test images:

* ``emulator``: ``npuq.Emulator(npuq.compile(qm)).run(x)``, float input quantized by the emulator
  (so the time is end to end: float images in, int8 logits out); ``batch_size`` images per native call.
* ``simulation``: ``qm.run_integer(x)``, the quantization simulation in torch integer arithmetic
  (the same integers as the emulator), fed ``batch_size`` images per call.
* ``fbgemm``: torch's own int8 model of the same float network (``fbgemm_baseline.convert_int8``: FX
  graph mode, the engine's default qconfig mapping, calibrated on the same 2048 images), on
  torch's fbgemm engine, ``batch_size`` images per call, under ``torch.inference_mode``.

``efficientnet_lite0``: the published ImageNet EfficientNet-Lite0 at 224x224
(``npuq.models.efficientnet.efficientnet_lite0(pretrained=True)``; needs the ``imagenet`` extra). There
are no labelled ImageNet images here, so the data are crops of real photographs
(``npuq.data.photos.photo_crops``): 64 crops of the calibration photographs (4 batches of 16) for both
quantizers and 256 crops of the disjoint evaluation photographs for timing, all through
``efficientnet.preprocess``. Timed: ``emulator`` and ``fbgemm`` as above, ``fp32``, the float torch
model itself, and ``fbgemm_stride1``, torch's int8 model with its four strided depthwise convolutions
rewritten so that fbgemm's fast depthwise kernel runs them (``fbgemm_baseline``, ``pads="stride1"``).
The simulation (about a second per image here) is not timed; it is run untimed to check the emulator's
integers. torch's models get the network with its TF-SAME zero pads folded into the convolutions the
way npuq's ``prepare`` folds them (``fbgemm_baseline.prepare_pads``; every rewritten float network is
checked to give exactly the original's outputs), unless ``pads="keep"``.

All backends use the same thread count: ``torch.set_num_threads(T)``, ``npuq.set_num_threads(T)`` and
``Emulator(threads=T)``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import fbgemm_baseline
import numpy as np
import torch

# ----------------------------------------------------------------- MobileNetV2 / Fashion-MNIST (default)
CHECKPOINT = "mobilenet_v2_w0.5_sgd"
CALIBRATION = dict(batch_size=256, shuffle=True, seed=1234, limit=8 * 256)
QUANTIZE = dict(weights="wess", bits=8, activations="mse")
IMPLEMENTATIONS = ("emulator", "simulation", "fbgemm")
# Images per call of each backend (benchmarks/bench_emulator.py --sweep measures the alternatives). Beyond a
# few hundred images the activations of a call no longer fit in the caches and all of them slow down.
DEFAULT_BATCH = {"emulator": 500, "simulation": 100, "fbgemm": 1000}
DESCRIPTION = {
    "emulator": "npuq.Emulator(program).run(float images): input quantization + native int8 kernels",
    "simulation": "QuantizedModel.run_integer(float images): torch integer-arithmetic simulation",
    "fbgemm": "torch.ao.quantization int8 model (convert_fx), quantized engine {engine}",
    "fp32": "the float torch model, float32 NCHW, torch.inference_mode",
    "fbgemm_stride1": "torch.ao.quantization int8 model (convert_fx), its strided depthwise convolutions behind "
    "asymmetric pads run at stride 1 and subsampled (a hand rewrite), quantized engine {engine}",
}
ALL_IMPLEMENTATIONS = ("emulator", "simulation", "fbgemm", "fp32")

# ---------------------------------------------------------------------- EfficientNet-Lite0 / photographs
EFFICIENTNET_SOURCE = "npuq.models.efficientnet.efficientnet_lite0(pretrained=True), 224x224"
EFFICIENTNET_CALIBRATION = dict(split="calibration", count=64, seed=0, batch_size=16)
EFFICIENTNET_EVALUATION = dict(split="evaluation", count=256, seed=0)


@dataclasses.dataclass(frozen=True)
class Case:
    """One network of the benchmark and how it is run."""

    name: str
    title: str  # for the report
    checkpoint: str  # where the float network comes from
    data: str  # what the timed images are
    implementations: tuple[str, ...]  # timed, the emulator first (the ratios are emulator / each other)
    batch: dict[str, int]  # default images per call of each backend
    sweep_batches: dict[str, tuple[int, ...]]
    goals: dict[str, float]  # ratio name -> the least the emulator should reach
    labelled: bool  # test labels exist (top-1 accuracy) or not (agreement with FP32)


CASES = {
    "mobilenet_v2": Case(
        name="mobilenet_v2",
        title=f"MobileNetV2 w0.5 ({CHECKPOINT}) on Fashion-MNIST test",
        checkpoint=CHECKPOINT,
        data="Fashion-MNIST test images, float NCHW (N, 1, 28, 28)",
        implementations=IMPLEMENTATIONS,
        batch={**DEFAULT_BATCH, "fp32": 500},
        sweep_batches={
            "emulator": (100, 250, 500, 1000, 2000),
            "simulation": (100, 250, 500, 1000),
            "fbgemm": (100, 250, 500, 1000, 2000),
        },
        goals={"emulator_vs_simulation": 3.0, "emulator_vs_fbgemm": 1.0},
        labelled=True,
    ),
    "efficientnet_lite0": Case(
        name="efficientnet_lite0",
        title="EfficientNet-Lite0 (ImageNet, 224x224) on photograph crops",
        checkpoint=EFFICIENTNET_SOURCE,
        data="crops of the evaluation photographs (npuq.data.photos.photo_crops), preprocessed, float NCHW "
        "(N, 3, 224, 224)",
        implementations=("emulator", "fp32", "fbgemm"),
        batch={"emulator": 32, "simulation": 8, "fbgemm": 32, "fp32": 32},
        sweep_batches={"emulator": (8, 16, 32, 64), "fp32": (8, 16, 32, 64), "fbgemm": (8, 16, 32, 64)},
        goals={},
        labelled=False,
    ),
}
MODELS = tuple(CASES)
DEFAULT_MODEL = "mobilenet_v2"


@dataclasses.dataclass
class Setup:
    """Everything the benchmark times, built once (see :func:`build`)."""

    threads: int
    model: torch.nn.Module  # the float network
    meta: dict
    qmodel: object  # npuq.QuantizedModel
    program: object  # npuq.Program
    emulator: object  # npuq.Emulator
    fbgemm: torch.nn.Module  # torch's int8 model
    engine: str  # torch.backends.quantized.engine used
    fbgemm_mode: str  # "fx" or "eager"
    x: torch.Tensor  # test images, float NCHW (10000, 1, 28, 28) / (256, 3, 224, 224)
    y: torch.Tensor | None  # test labels (None: there are none)
    batch: dict[str, int]
    setup_s: dict[str, float]
    case: Case = CASES[DEFAULT_MODEL]
    quantize: dict = dataclasses.field(default_factory=lambda: dict(QUANTIZE))
    calibration: dict = dataclasses.field(default_factory=lambda: dict(CALIBRATION))
    fp32_model: torch.nn.Module | None = None  # what "fp32" runs (default: ``model``)
    pads: dict | None = None  # what was done to the zero pads for torch's models, per variant
    int8_variants: dict = dataclasses.field(default_factory=dict)  # more torch int8 models timed, by name

    @property
    def implementations(self) -> tuple[str, ...]:
        return self.case.implementations + tuple(self.int8_variants)

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
        if impl in self.int8_variants:
            return _chunked(self.int8_variants[impl], self.batch["fbgemm"])
        if impl == "fp32":
            return _chunked(self.fp32_model if self.fp32_model is not None else self.model, self.batch["fp32"])
        raise ValueError(f"unknown implementation {impl!r}; one of {', '.join(ALL_IMPLEMENTATIONS)}")

    def reference_integers(self, x: torch.Tensor, how: str = "integer") -> torch.Tensor:
        """The quantization simulation's integers of ``x`` (int64): ``how="integer"`` runs
        ``qm.run_integer`` (torch arithmetic), ``"native"`` ``qm.run_native`` (npuq's kernels without the
        emulator), ``batch["simulation"]`` images per call."""
        if how not in ("integer", "native"):
            raise ValueError(f"how must be 'integer' or 'native', got {how!r}")
        fn = self.qmodel.run_integer if how == "integer" else self.qmodel.run_native
        return _chunked(fn, self.batch["simulation"])(x)


def _chunked(fn, batch: int):
    def run(x: torch.Tensor):
        with torch.inference_mode():
            outs = [fn(x[lo : lo + batch]) for lo in range(0, x.shape[0], batch)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    return run


def configure(threads: int, engine: str = "fbgemm") -> str:
    """Same thread count for torch and npuq; ``engine`` (or x86) as torch's quantized engine. Returns it."""
    import npuq

    torch.set_num_threads(threads)
    npuq.set_num_threads(threads)
    return fbgemm_baseline.select_engine(engine)


def build(
    threads: int,
    *,
    model: str = DEFAULT_MODEL,
    batch: dict[str, int] | None = None,
    engine: str = "fbgemm",
    fbgemm_mode: str = "fx",
    pads: str = "fold",
    weights: str | None = None,
    images: int | None = None,
    calib_images: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Setup:
    """Load, quantize, compile and convert ``model`` (one of :data:`MODELS`). MobileNetV2 takes about a
    minute on two cores, EfficientNet-Lite0 two to three, most of it ``npuq.quantize``.

    ``weights``: npuq's weight method (default ``"wess"``); ``pads``: "fold" or "keep", how torch's
    models get the network's zero pads (EfficientNet; see ``fbgemm_baseline``). ``images`` /
    ``calib_images``: EfficientNet's evaluation / calibration crops (default 256 / 64); MobileNetV2
    always loads the whole test set (the script slices it).
    """
    if model not in CASES:
        raise ValueError(f"unknown model {model!r}; one of {', '.join(MODELS)}")
    if model == "efficientnet_lite0":
        return _build_efficientnet(
            threads,
            batch=batch,
            engine=engine,
            fbgemm_mode=fbgemm_mode,
            pads=pads,
            weights=weights,
            images=images,
            calib_images=calib_images,
            log=log,
        )
    from npuq.data.fashion_mnist import fashion_mnist_loader, fashion_mnist_tensors
    from npuq.models.checkpoints import load_checkpoint

    case = CASES[model]
    quantize = dict(QUANTIZE, **({"weights": weights} if weights else {}))
    engine = configure(threads, engine)
    setup_s = {}
    model, meta = load_checkpoint(CHECKPOINT)
    model.eval()
    x, y = fashion_mnist_tensors("test")

    calib = fashion_mnist_loader("train", **CALIBRATION)
    qmodel, program, emulator = _npuq_side(model, calib, quantize, threads, setup_s, log, CHECKPOINT)

    t = time.perf_counter()
    log(f"converting to torch int8 ({engine}, {fbgemm_mode}) ...")
    calib = fashion_mnist_loader("train", **CALIBRATION)
    fbgemm, engine, used_mode = fbgemm_baseline.convert_int8(
        model, calib, x[:1], engine=engine, mode=fbgemm_mode, pads=pads
    )
    setup_s["torch_convert"] = time.perf_counter() - t

    return Setup(
        threads=threads,
        model=model,
        meta=meta,
        qmodel=qmodel,
        program=program,
        emulator=emulator,
        fbgemm=fbgemm,
        engine=engine,
        fbgemm_mode=used_mode,
        x=x,
        y=y,
        batch={**case.batch, **(batch or {})},
        setup_s=setup_s,
        case=case,
        quantize=quantize,
        calibration=dict(CALIBRATION),
    )


def _npuq_side(model, calib, quantize: dict, threads: int, setup_s: dict, log, name: str):
    """Quantize, compile and load into the emulator, timing each step into ``setup_s``."""
    import npuq

    t = time.perf_counter()
    shown = {k: v for k, v in quantize.items() if k != "calib_batches"}
    log(f"quantizing {name} with npuq ({', '.join(f'{k}={v}' for k, v in shown.items())}) ...")
    qmodel = npuq.quantize(model, calib, **quantize)
    setup_s["npuq_quantize"] = time.perf_counter() - t
    t = time.perf_counter()
    program = npuq.compile(qmodel)
    emulator = npuq.Emulator(program, threads=threads)
    setup_s["npuq_compile"] = time.perf_counter() - t
    return qmodel, program, emulator


def _build_efficientnet(threads: int, *, batch, engine, fbgemm_mode, pads, weights, images, calib_images, log) -> Setup:
    from npuq.data.photos import photo_crops
    from npuq.models import efficientnet

    case = CASES["efficientnet_lite0"]
    quantize = dict(QUANTIZE, **({"weights": weights} if weights else {}))
    calibration = dict(EFFICIENTNET_CALIBRATION, **({"count": calib_images} if calib_images else {}))
    evaluation = dict(EFFICIENTNET_EVALUATION, **({"count": images} if images else {}))
    if calibration["count"] < 1 or evaluation["count"] < 1:
        raise ValueError("calibration and evaluation need at least one crop each")
    if pads not in fbgemm_baseline.PADS:
        raise ValueError(f"pads must be one of {', '.join(fbgemm_baseline.PADS)}, got {pads!r}")
    engine = configure(threads, engine)
    setup_s = {}

    t = time.perf_counter()
    log(f"loading EfficientNet-Lite0 and {calibration['count']} + {evaluation['count']} photograph crops ...")
    model = efficientnet.efficientnet_lite0(pretrained=True).eval()
    cb = calibration["batch_size"]
    cal = efficientnet.preprocess(photo_crops("calibration", calibration["count"], seed=calibration["seed"]))
    calib = [cal[lo : lo + cb] for lo in range(0, cal.shape[0], cb)]
    x = efficientnet.preprocess(photo_crops("evaluation", evaluation["count"], seed=evaluation["seed"]))
    setup_s["load"] = time.perf_counter() - t

    qmodel, program, emulator = _npuq_side(
        model, calib, dict(quantize, calib_batches=None), threads, setup_s, log, "EfficientNet-Lite0"
    )

    t = time.perf_counter()
    log(f"converting to torch int8 ({engine}, {fbgemm_mode}, zero pads: {pads}) ...")
    fbgemm, engine, used_mode = fbgemm_baseline.convert_int8(
        model, calib, x[:1], engine=engine, mode=fbgemm_mode, pads=pads
    )
    setup_s["torch_convert"] = time.perf_counter() - t
    pad_info = {pads: fbgemm_baseline.prepare_pads(model, pads)[1]}
    variants = {}
    if pads != "stride1" and used_mode == "fx":
        # the hand rewrite that keeps fbgemm on its fast depthwise kernel (fbgemm_baseline's module doc)
        t = time.perf_counter()
        log("converting to torch int8 with the strided depthwise convolutions at stride 1 ...")
        variants["fbgemm_stride1"] = fbgemm_baseline.convert_int8(
            model, calib, x[:1], engine=engine, mode="fx", pads="stride1"
        )[0]
        setup_s["torch_convert_stride1"] = time.perf_counter() - t
        pad_info["stride1"] = fbgemm_baseline.prepare_pads(model, "stride1")[1]

    # the float model timed: the zero pads folded like torch's int8 model's (unless "keep"); it must
    # compute exactly what the network computes
    fp32_model = model if pads == "keep" else fbgemm_baseline.prepare_pads(model, "fold")[0].eval()
    with torch.inference_mode():
        check = {"fp32": fp32_model}
        check.update(
            {
                name: fbgemm_baseline.prepare_pads(model, info["mode"])[0].eval()
                for name, info in pad_info.items()
                if info["mode"] != "keep"
            }
        )
        ref = model(x[:4])
        for name, m in check.items():
            if not torch.equal(m(x[:4]), ref):
                raise AssertionError(f"rewriting the zero pads ({name}) changed the float network's outputs")

    return Setup(
        threads=threads,
        model=model,
        meta={"source": EFFICIENTNET_SOURCE},
        qmodel=qmodel,
        program=program,
        emulator=emulator,
        fbgemm=fbgemm,
        engine=engine,
        fbgemm_mode=used_mode,
        x=x,
        y=None,
        batch={**case.batch, **(batch or {})},
        setup_s=setup_s,
        case=case,
        quantize=quantize,
        calibration={**calibration, "evaluation": evaluation},
        fp32_model=fp32_model,
        pads=pad_info,
        int8_variants=variants,
    )


def top1(impl: str, out) -> np.ndarray:
    """Predicted classes from an implementation's output (ties: the lowest index, for all of them)."""
    if isinstance(out, torch.Tensor):
        out = out.detach().float().numpy() if impl.startswith(("fbgemm", "fp32")) else out.numpy()
    out = np.asarray(out)
    return out.reshape(out.shape[0], -1).argmax(axis=1)


def logits(setup: Setup, impl: str, out) -> torch.Tensor:
    """Real-valued (N, classes) float64 logits of an implementation's output: the emulator's int8 and the
    simulation's integers dequantized with the program's output scale and zero point."""
    if impl in ("emulator", "simulation", "emulator_int8_input"):
        q = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out).to(torch.float64)
        op = setup.program.output_op
        z = (q - float(op.zero_point)) * float(op.scale)
    else:
        z = out.detach().to(torch.float64)
    return z.reshape(z.shape[0], -1)


def same_integers(emulator_out: np.ndarray, simulation_out: torch.Tensor) -> bool:
    """Whether the emulator's int8 outputs equal the simulation's integers (int64, same layout)."""
    sim = simulation_out.numpy()
    return emulator_out.shape == sim.shape and bool(np.array_equal(emulator_out.astype(np.int64), sim))


__all__ = [
    "ALL_IMPLEMENTATIONS",
    "CALIBRATION",
    "CASES",
    "CHECKPOINT",
    "Case",
    "DEFAULT_BATCH",
    "DEFAULT_MODEL",
    "DESCRIPTION",
    "EFFICIENTNET_CALIBRATION",
    "EFFICIENTNET_EVALUATION",
    "EFFICIENTNET_SOURCE",
    "IMPLEMENTATIONS",
    "MODELS",
    "QUANTIZE",
    "Setup",
    "build",
    "configure",
    "logits",
    "same_integers",
    "top1",
]
