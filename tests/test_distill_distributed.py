"""Data-parallel distillation: two CPU processes under torchrun (gloo) keep identical replicas, and
their loss on each global batch equals a single process's on the same batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distill_worker.py")


def _run(args, out, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    proc = subprocess.run([sys.executable, *args, str(WORKER), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


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
