"""Speed of the NPU emulator on MobileNetV2 / Fashion-MNIST: npuq.Emulator vs the quantization simulation vs
torch's int8 model (fbgemm), on the same batch of test images, with the same thread count.

Run explicitly (not collected by the default test run):

    python3 -m pytest benchmarks/test_emulator_speed.py --benchmark-only
    python3 -m pytest benchmarks/test_emulator_speed.py --benchmark-only -k b500
    NPUQ_BENCH_THREADS=1 python3 -m pytest benchmarks/test_emulator_speed.py --benchmark-only

Test ids are ``[b<images>-<implementation>]``; each batch is its own benchmark group
(``mobilenet_v2-b<images>``), so pytest-benchmark's table compares the three side by side. Every call
takes the same float NCHW images (the first ``<images>`` of the test set) and returns the outputs of all
of them: the emulator quantizes the input itself (``emulator.run(x)``), the simulation is
``qm.run_integer(x)``, torch's model quantizes its input in its first node. ``extra_info`` carries
images/s of the median time. Setup (quantization with npuq, conversion with torch) takes about a
minute before the first benchmark. benchmarks/bench_emulator.py measures the full test set, accuracy and
the ratios in one run; emulator_cases.py says exactly what each side runs.
"""

import math
import time

import emulator_cases
import numpy as np
import pytest

BATCHES = (1, 500)


@pytest.fixture(scope="module")
def setup(npuq_module, bench_threads):
    """Quantized model, program, emulator and torch int8 model, built once for the module."""
    return emulator_cases.build(bench_threads)


@pytest.fixture(scope="module")
def simulation_outputs(setup):
    """The simulation's integers per batch size (the reference the emulator must equal)."""
    cache = {}

    def get(batch):
        if batch not in cache:
            cache[batch] = setup.runner("simulation")(setup.x[:batch])
        return cache[batch]

    return get


@pytest.mark.parametrize("impl", emulator_cases.IMPLEMENTATIONS)
@pytest.mark.parametrize("batch", BATCHES, ids=[f"b{b}" for b in BATCHES])
def test_emulator_speed(benchmark, setup, simulation_outputs, batch, impl, bench_threads):
    x = setup.x[:batch]
    fn = setup.runner(impl)

    out = fn(x)  # runs once before timing, and checks the result
    assert out.shape[0] == batch
    if impl == "emulator":
        assert out.dtype == np.int8
        assert emulator_cases.same_integers(out, simulation_outputs(batch))

    # rounds: about a second of timing, at least 5 (the simulation takes ~0.3 s per 500 images)
    reps = min(10, max(1, int(0.2 / max(_time_once(fn, x), 1e-6))))
    per_round = _time_once(fn, x, reps) / reps
    rounds = max(5, min(200, math.ceil(1.0 / max(per_round * reps, 1e-6))))

    benchmark.group = f"mobilenet_v2-b{batch}"
    benchmark.extra_info.update(
        impl=impl,
        images=batch,
        threads=bench_threads,
        engine=setup.engine,
        torch_quantization=setup.fbgemm_mode,
        what=emulator_cases.DESCRIPTION[impl].format(engine=setup.engine),
    )
    benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=reps, warmup_rounds=1)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    median = getattr(stats, "median", None)
    if median:
        benchmark.extra_info["images_per_s_median"] = batch / median


def _time_once(fn, x, reps=1):
    t = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return time.perf_counter() - t
