"""Two worker processes share one Optuna rank search through PostgreSQL; one of them is killed in the middle
of a trial, and the study still ends with every trial recorded once and the lost trial retried.

The server comes from NPUQ_TEST_POSTGRES_URL; without it the test starts a throw-away server with
scripts/test_postgres.sh when PostgreSQL's server binaries are installed (scripts/setup.sh test installs them),
and is skipped otherwise, except under CI (NPUQ_CI=1, set by .ci/run), where a missing server is a failure.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from support import HERE, ROOT
from support.helpers import skip_unless_ci

try:
    import optuna  # noqa: F401
    import psycopg2  # noqa: F401
except ImportError as exc:
    skip_unless_ci(
        f"the distributed search needs optuna and psycopg2 (pip install npuq[lrf]): {exc}", allow_module_level=True
    )

WORKER = HERE / "lrf_search_worker.py"
SCRIPT = ROOT / "scripts" / "test_postgres.sh"
N_TRIALS = 16


@pytest.fixture(scope="module")
def postgres_url():
    url = os.environ.get("NPUQ_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        skip_unless_ci(
            "no PostgreSQL: set NPUQ_TEST_POSTGRES_URL, or install the server (apt-get install postgresql) "
            "so that scripts/test_postgres.sh can start one"
        )
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        skip_unless_ci(f"could not start a PostgreSQL server with {SCRIPT.name}: {started.stderr.strip()[-500:]}")
    exports = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.split("\n") if "=" in line)
    try:
        yield exports["NPUQ_TEST_POSTGRES_URL"]
    finally:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", exports["NPUQ_TEST_POSTGRES_DIR"]], capture_output=True, timeout=60
        )


def _worker(url, study, seconds, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the workers import npuq as this test does
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, study, str(N_TRIALS), str(seconds), *map(str, extra)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_worker_does_not_stall_the_study(postgres_url, tmp_path):
    from npuq.lrf.search import open_storage

    study_name = f"kill-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "slow_trial_started"
    start = time.monotonic()
    # the victim hangs in its 3rd evaluation (the uncompressed model or a trial before it, then a trial)
    victim = _worker(postgres_url, study_name, 0.05, 3, marker)
    survivor = _worker(postgres_url, study_name, 0.2)
    try:
        while not marker.exists():
            assert victim.poll() is None, f"the victim exited early: {victim.communicate()[1][-3000:]}"
            assert time.monotonic() - start < 120, "the victim never reached its slow trial"
            time.sleep(0.05)
        time.sleep(0.5)  # a few heartbeats from the running trial
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        # a stalled study would leave the survivor waiting for the dead trial forever
        _, err = survivor.communicate(timeout=120)
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert survivor.returncode == 0, err[-4000:]

    storage = open_storage(postgres_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = optuna.trial.TrialState
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state == states.COMPLETE]
    assert len(complete) == N_TRIALS, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state in (states.RUNNING, states.WAITING)]
    failed = [t for t in trials if t.state == states.FAIL]
    assert len(failed) == 1, [(t.number, t.state.name) for t in trials]
    lost = failed[0]
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].params == lost.params
    # nothing counted twice: every completed trial has its values, and surplus trials (if any) are pruned
    assert all(len(t.values) == 2 for t in complete)
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == states.PRUNED)
