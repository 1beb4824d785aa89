"""Worker processes of the distillation tests.

* ``torchrun --standalone --nproc_per_node=N tests/support/distill_worker.py OUT`` (or N = 1 without torchrun for
  the single-process reference), for tests/distill/test_distributed.py: trains a small student with a KD
  term from a fixed teacher on a fixed synthetic data set and writes, per rank, the loss of every step and
  the final parameters.
* ``python tests/support/distill_worker.py experiment CONFIG.json OUT KILL_AFTER_EPOCH TEST_IMAGES``, for
  tests/distill/test_resume.py: runs the experiment (evaluated on the first TEST_IMAGES test images, as
  that test's runs are) and kills itself with SIGKILL right after the checkpoint of epoch KILL_AFTER_EPOCH
  is on disk, as ``kill -9`` would at that moment. The kill point is a step of the program, not a time:
  the test does not depend on how fast the machine is.
"""

import json
import os
import signal
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


def _write(path: Path, data: bytes) -> None:
    # complete or absent: a test never reads half a result
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def data_parallel(out: str) -> None:
    import io

    import torch.distributed as dist

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
    params = io.BytesIO()
    torch.save({k: v.clone() for k, v in student.state_dict().items()}, params)
    _write(path / f"params_rank{rank}.pt", params.getvalue())
    _write(path / f"losses_rank{rank}.json", json.dumps({"world_size": world_size, "losses": losses}).encode())
    if dist.is_initialized():
        # leave together, after every rank has written: no rank tears its connections down under another
        dist.barrier()
        dist.destroy_process_group()


def experiment_killed_after(config: str, out: str, kill_after_epoch: int, test_images: int) -> None:
    import npuq.distill.experiment as experiment
    import npuq.distill.trainer as trainer

    torch.set_num_threads(1)
    data = experiment._data
    experiment._data = lambda exp: (lambda train, test: (train, (test[0][:test_images], test[1][:test_images])))(
        *data(exp)
    )
    save = trainer.save_checkpoint

    def save_then_die(path, learner, epoch, history, extra=None):
        save(path, learner, epoch, history, extra)
        if epoch == kill_after_epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    trainer.save_checkpoint = save_then_die
    experiment.run_experiment(experiment.parse_experiment(json.loads(Path(config).read_text())), out, progress=False)


if __name__ == "__main__":
    if sys.argv[1] == "experiment":
        experiment_killed_after(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        data_parallel(sys.argv[1])
