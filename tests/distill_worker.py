"""One process of the data-parallel distillation test (tests/test_distill_distributed.py).

Run as ``torchrun --standalone --nproc_per_node=N tests/distill_worker.py OUT`` (or with N = 1 and no
torchrun for the single-process reference). Trains a small student with a KD term from a fixed teacher
on a fixed synthetic data set and writes, per rank, the loss of every step and the final parameters.
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

from npuq.distill.losses import KDLoss
from npuq.distill.objective import Term
from npuq.distill.processes import offline_learner
from npuq.distill.trainer import OptimConfig, fit, world


def _net(width: int, seed: int) -> nn.Module:
    # no BatchNorm: its batch statistics would be per rank, so the loss could not match a single process
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(width * 36, 10))


def main(out: str) -> None:
    torch.set_num_threads(1)
    rank, world_size = world()
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(96, 1, 14, 14, generator=g), torch.randint(0, 10, (96,), generator=g)
    student, teacher = _net(4, 1), _net(16, 2)
    optim = OptimConfig(lr=0.1, epochs=2, batch_size=16, weight_decay=0.0)
    learner = offline_learner(student, [teacher], [Term(KDLoss(temperature=2.0), 0.7)], optim, task_weight=0.3)
    losses = []
    step = learner.step
    learner.step = lambda x, y: losses.append(step(x, y)["loss"]) or {"loss": losses[-1]}
    fit(learner, images, labels, optim, seed=5, progress=False)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.clone() for k, v in student.state_dict().items()}, path / f"params_rank{rank}.pt")
    (path / f"losses_rank{rank}.json").write_text(json.dumps({"world_size": world_size, "losses": losses}))


if __name__ == "__main__":
    main(sys.argv[1])
