"""Distillation processes as learners for :func:`npuq.distill.trainer.fit`.

* :func:`offline_learner` — a frozen teacher (or several, averaged or weighted) teaches a student;
  with ``student_input`` the student sees a transformed input (e.g. a corrupted image) while the
  teachers see the clean one: generalized distillation / learning with privileged information.
* :func:`mutual_learner` — deep mutual learning (Zhang et al. 2018): N peers trained together, each
  with its task loss plus the mean KL divergence from every other peer's (detached) prediction.
* :func:`finetune_with_teacher` — fine-tune a (compressed) model with the original as its teacher;
  the entry point of the factorization work. Its sequence-model counterpart (teacher-forced token logits,
  padded positions left out) is :func:`npuq.distill.seq2seq.finetune_seq2seq_with_teacher`.

Teacher-assistant chains and born-again generations are sequences of offline runs; :mod:`npuq.distill.
experiment` strings them together from a config.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq.distill.objective import DistillationObjective, Term, tap_channels
from npuq.distill.trainer import Learner, OptimConfig, accuracy, fit, probe


def _items(parts: dict, total: torch.Tensor) -> dict:
    out = {k: float(v.detach()) for k, v in parts.items()}
    out["loss"] = float(total.detach())
    return out


def offline_learner(
    student: nn.Module,
    teachers,
    terms,
    optim: OptimConfig,
    *,
    test=None,
    task_weight: float = 1.0,
    teacher_weights=None,
    ensemble: str = "loss",
    student_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Learner:
    """A student taught by frozen ``teachers`` through ``terms`` (no terms, no teachers: plain training).

    ``test``: ``(images, labels)`` evaluated after each epoch (student accuracy, on ``student_input``
    of the images when given). ``student_input``: the student's view of a batch (privileged
    information: the teachers see the untransformed batch).
    """
    objective = DistillationObjective(
        student, teachers, terms, task_weight=task_weight, teacher_weights=teacher_weights, ensemble=ensemble
    )
    optimizer = optim.make(objective.trainable_parameters())

    def step(x, y):
        xs = student_input(x) if student_input is not None else x
        total, parts = objective(xs, y, x_teacher=x if student_input is not None else None)
        total.backward()
        return _items(parts, total)

    def evaluate():
        if test is None:
            return {}
        images, labels = test
        if student_input is not None:
            images = student_input(images)
        return {"test_accuracy": accuracy(student, images, labels)}

    def check(x, y):
        xs = student_input(x) if student_input is not None else x
        probe(
            [objective],
            lambda: objective(xs, y, x_teacher=x if student_input is not None else None),
            f"a training batch of shape {tuple(x.shape)} with labels up to {int(y.max())}",
        )

    return Learner(
        modules={"objective": objective}, optimizers={"student": optimizer}, step=step, evaluate=evaluate, check=check
    )


def mutual_learner(
    peers, optim: OptimConfig, *, test=None, kl_weight: float = 1.0, temperature: float = 1.0
) -> Learner:
    """Deep mutual learning of ``peers`` (a list of >= 2 models), all updated at every step.

    Peer i minimizes ``CE(p_i, y) + kl_weight * T^2 * mean_{j != i} KL(p_j || p_i)`` with ``p_j``
    detached (Zhang et al. 2018 use T = 1 and weight 1). Logs each peer's loss and test accuracy and
    the peers' mean accuracy.
    """
    peers = list(peers)
    if len(peers) < 2:
        raise ValueError(f"mutual learning needs at least 2 peers, got {len(peers)}")
    if not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise ValueError(f"kl_weight must be a finite number >= 0, got {kl_weight!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    modules = {f"peer{i}": p for i, p in enumerate(peers)}
    optimizers = {name: optim.make(p.parameters()) for name, p in modules.items()}
    t = float(temperature)

    def step(x, y):
        logits = [p(x) for p in peers]
        soft = [F.softmax(z.detach() / t, dim=1) for z in logits]
        total, values = 0.0, {}
        for i, z in enumerate(logits):
            log_p = F.log_softmax(z / t, dim=1)
            kl = sum(F.kl_div(log_p, soft[j], reduction="batchmean") for j in range(len(peers)) if j != i)
            loss_i = F.cross_entropy(z, y) + kl_weight * t * t * kl / (len(peers) - 1)
            values[f"peer{i}"] = float(loss_i.detach())
            total = total + loss_i  # peer i's loss depends on peer i's parameters only (others detached)
        total.backward()
        return values

    def evaluate():
        if test is None:
            return {}
        accs = {f"peer{i}_test_accuracy": accuracy(p, *test) for i, p in enumerate(peers)}
        accs["test_accuracy"] = sum(accs.values()) / len(peers)
        return accs

    def check(x, y):
        probe(
            peers,
            lambda: [F.cross_entropy(p(x), y) for p in peers],
            f"a training batch of shape {tuple(x.shape)} with labels up to {int(y.max())}",
        )

    return Learner(modules=modules, optimizers=optimizers, step=step, evaluate=evaluate, check=check)


def finetune_with_teacher(
    model: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optim: OptimConfig | None = None,
    temperature: float = 4.0,
    kd_weight: float = 0.9,
    task_weight: float = 0.1,
    hints=(),
    test=None,
    seed: int = 0,
    out_dir=None,
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` on ``(images, labels)`` with ``teacher`` (frozen) as a soft target.

    The loss is ``task_weight * CE + kd_weight * KD(T)`` plus optional feature hints
    ``hints = [(student_path, teacher_path, weight), ...]`` (FitNets MSE with an adapter where channel
    counts differ). Defaults: a short, low-learning-rate SGD schedule (2 epochs, lr 0.01). Returns
    :func:`fit`'s summary.
    """
    from npuq.distill.losses import HintLoss, KDLoss

    optim = optim or OptimConfig(lr=0.01, epochs=2)
    terms = [Term(KDLoss(temperature=temperature), kd_weight)]
    for s_path, t_path, w in hints:
        adapter = HintLoss(tap_channels(model, s_path, images[:2]), tap_channels(teacher, t_path, images[:2]))
        terms.append(Term(adapter, w, student=s_path, teacher=t_path))
    learner = offline_learner(model, [teacher], terms, optim, test=test, task_weight=task_weight)
    return fit(
        learner, images, labels, optim, seed=seed, out_dir=out_dir, progress=progress, desc="fine-tuning with teacher"
    )


__all__ = ["finetune_with_teacher", "mutual_learner", "offline_learner"]
