"""Data-parallel distillation: two CPU processes under torchrun (gloo) keep identical replicas, and
their loss on each global batch equals a single process's on the same batch."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from support import HERE

WORKER = HERE / "distill_worker.py"
ATTEMPTS = 3  # launches of one configuration before the test fails
TIMEOUT_S = 300  # per launch; a normal one takes about 10 s, several times that on a loaded machine


def _launch(args, out, env) -> tuple[int | None, str]:
    """One launch in its own process group, so that a launch that hangs is ended with every process it
    started (torchrun's workers included); returns (exit status or None on time-out, its output)."""
    proc = subprocess.Popen(
        [sys.executable, *args, str(WORKER), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output


def _run(args, out):
    """Run the worker until one launch exits cleanly. Starting processes, their rendezvous and their exit
    depend on the scheduler (the suite shares its cores with other jobs): a launch that fails is tried again,
    up to ATTEMPTS in all, and every failed launch's output is in the failure message. The numbers are
    checked only from a clean launch, and never retried: a wrong number fails at once."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    failures = []
    for attempt in range(1, ATTEMPTS + 1):
        shutil.rmtree(out, ignore_errors=True)  # nothing left from a failed launch is read
        status, output = _launch(args, out, env)
        if status == 0:
            return
        what = f"timed out after {TIMEOUT_S} s" if status is None else f"exited with status {status}"
        failures.append(f"--- launch {attempt} {what}:\n{output[-3000:]}")
    pytest.fail(f"the worker never exited cleanly in {ATTEMPTS} launches:\n" + "\n".join(failures))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_processes_match_one(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    _run([], single)
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], multi)
    ref = json.loads((single / "losses_rank0.json").read_text())
    ranks = [json.loads((multi / f"losses_rank{r}.json").read_text()) for r in (0, 1)]
    assert ref["world_size"] == 1 and all(r["world_size"] == 2 for r in ranks)
    # each rank's loss is the mean over its half of the global batch: their mean is the global batch's loss
    merged = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    assert len(merged) == len(ref["losses"]) == 12
    assert torch.allclose(torch.tensor(merged), torch.tensor(ref["losses"]), rtol=1e-5, atol=1e-6)
    p0, p1, p_ref = (torch.load(d / f"params_rank{r}.pt") for d, r in ((multi, 0), (multi, 1), (single, 0)))
    for k in p_ref:
        assert torch.equal(p0[k], p1[k]), f"replicas differ in {k}"
        assert torch.allclose(p0[k], p_ref[k], rtol=1e-4, atol=1e-6), k


def test_a_failed_launch_is_retried_and_reported_in_full(tmp_path, monkeypatch):
    # the retry itself: two launches that fail (as a lost rendezvous would), then a clean one
    outcomes = iter([(1, "rendezvous timed out"), (None, "hung"), (0, "")])
    monkeypatch.setattr(sys.modules[__name__], "_launch", lambda args, out, env: next(outcomes))
    _run([], tmp_path / "a")
    outcomes = iter([(1, "first"), (-9, "second"), (1, "third")])
    with pytest.raises(pytest.fail.Exception, match=r"(?s)never exited cleanly in 3.*first.*second.*third"):
        _run([], tmp_path / "b")
