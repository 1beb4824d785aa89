"""pytest configuration of the speed benchmarks (conv kernels, whole-network emulator):
``python3 -m pytest benchmarks/ --benchmark-only``.

Not part of the default test run: the package's pytest configuration collects ``tests/`` only.
Needs torch, numpy, pytest-benchmark and (for the npuq cases) an importable npuq; without npuq those
cases are skipped and the torch ones still run.
"""

import os

# the helpers next to this file import by name: pyproject's pytest settings put benchmarks/ on the path
import conv_cases
import pytest


@pytest.fixture(scope="session")
def bench_threads():
    """The thread count every implementation runs with (env NPUQ_BENCH_THREADS, else os.cpu_count())."""
    return conv_cases.bench_threads()


@pytest.fixture(scope="session")
def npuq_module(bench_threads):
    """The npuq package, configured with the benchmark's thread count; skips when not importable."""
    npuq, err = conv_cases.import_npuq()
    if npuq is None:
        pytest.skip(f"npuq is not importable ({err})")
    npuq.set_num_threads(bench_threads)
    return npuq


@pytest.fixture(scope="session", autouse=True)
def _configure_torch(bench_threads):
    """fbgemm engine and the same thread count for torch (npuq: see npuq_module)."""
    conv_cases.configure(bench_threads)
    yield


def pytest_report_header(config):
    import torch

    npuq, err = conv_cases.import_npuq()
    where = f"npuq from {os.path.dirname(npuq.__file__)}" if npuq is not None else f"npuq NOT importable ({err})"
    return [
        f"benchmarks: {conv_cases.bench_threads()} threads (NPUQ_BENCH_THREADS), torch {torch.__version__}, {where}"
    ]
