"""Shared pytest configuration for the npuq test suite.

Hypothesis profiles (select with the environment variable NPUQ_HYPOTHESIS_PROFILE):

* ``default``  -- ~60 examples per property, no deadline (the fast local run),
* ``ci``       -- 200 examples, derandomized (reproducible in CI), no deadline,
* ``thorough`` -- 1000 examples, no deadline (a long soak run),
* ``quick``    -- 5 examples, derandomized (under slow tools such as compute-sanitizer).

Tests marked ``@pytest.mark.slow`` are skipped unless ``--runslow`` is given or the environment
variable NPUQ_RUN_SLOW=1 is set.  No benchmark plugin is needed (the suite is benchmark-free).
"""

import os

import pytest
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("default", max_examples=60, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, suppress_health_check=_SUPPRESS, print_blob=True
)
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("quick", max_examples=5, deadline=None, derandomize=True, suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("NPUQ_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module's tests (restored afterwards): their models and tensors
    are small, and on shared cores one thread is faster than several competing."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def _run_slow(config) -> bool:
    return bool(config.getoption("--runslow")) or os.environ.get("NPUQ_RUN_SLOW") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a slow test, excluded by default (--runslow or NPUQ_RUN_SLOW=1)")
    # pyproject's addopts deselects slow tests with -m 'not slow'; --runslow lifts exactly that
    if _run_slow(config) and config.option.markexpr.strip() in ("not slow", "'not slow'"):
        config.option.markexpr = ""


def pytest_collection_modifyitems(config, items):
    # without pyproject's -m 'not slow' (e.g. `pytest -c /dev/null tests`), still skip slow tests unless asked
    # for; an explicit -m expression (such as -m slow) is the user's choice and is left alone
    if _run_slow(config) or config.option.markexpr:
        return
    skip_slow = pytest.mark.skip(reason="slow: use --runslow or NPUQ_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
