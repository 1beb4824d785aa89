"""Distillation of sequence-to-sequence models: fine-tuning a (compressed) model with the original as teacher.

The models are teacher-forced: ``model(*inputs)`` returns token logits ``(B, L, V)``, position ``i`` predicting
``targets[:, i]``, with ``pad_id`` marking the positions past each target sequence. Student and teacher read
the same batch and are compared token by token (word-level distillation of Kim & Rush 2016, "Sequence-Level
Knowledge Distillation", section 3.1), on the valid positions only:

    loss = task_weight * CE(s, y) + kd_weight * KDLoss(T)(s, t)

where ``s``, ``t`` are the student's and teacher's logits at the N non-padded positions of the batch, stacked
into (N, V), and ``y`` the N target tokens. Both terms are means over those N tokens, so every token of the
batch weighs the same whatever the lengths of the sequences it belongs to. ``KDLoss`` is
:class:`npuq.distill.losses.KDLoss` unchanged: ``T^2 * mean_n KL(softmax(t_n / T) || softmax(s_n / T))``.

This is the sequence-model counterpart of :func:`npuq.distill.processes.finetune_with_teacher`, which takes
images and class labels.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq.distill.losses import KDLoss

__all__ = ["finetune_seq2seq_with_teacher", "sequence_distillation_loss"]


def sequence_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    kd: KDLoss,
    *,
    kd_weight: float = 0.9,
    task_weight: float = 0.1,
    pad_id: int = 0,
) -> tuple[torch.Tensor, dict]:
    """``(total, {"ce", "kd", "tokens"})`` for teacher-forced logits ``(B, L, V)`` of student and teacher and
    the targets ``(B, L)``; positions where ``targets == pad_id`` are left out (see the module doc)."""
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must both be (batch, steps, vocab) of the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if targets.shape != student_logits.shape[:2]:
        raise ValueError(
            f"targets must be (batch, steps) = {tuple(student_logits.shape[:2])}, got {tuple(targets.shape)}"
        )
    valid = targets != pad_id
    tokens = int(valid.sum())
    if tokens == 0:
        raise ValueError(f"the batch has no target token other than the padding id {pad_id}")
    s, t, y = student_logits[valid], teacher_logits[valid], targets[valid]
    ce = F.cross_entropy(s, y)
    distill = kd(s, t)
    total = task_weight * ce + kd_weight * distill
    return total, {"ce": float(ce.detach()), "kd": float(distill.detach()), "tokens": tokens}


def _check(value, name: str, low: float, strict: bool) -> float:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
    )
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


def finetune_seq2seq_with_teacher(
    model: nn.Module,
    teacher: nn.Module,
    batches: Callable[[int], Iterable[tuple[tuple, torch.Tensor]]],
    *,
    epochs: int = 1,
    lr: float = 5e-4,
    lr_schedule: str = "constant",
    total_steps: int | None = None,
    clip_norm: float = 5.0,
    temperature: float = 2.0,
    kd_weight: float = 0.9,
    task_weight: float = 0.1,
    pad_id: int = 0,
    seed: int = 0,
    threads: int | None = 1,
    student_view: Callable[[tuple, torch.Generator], tuple] | None = None,
    progress: bool = True,
    desc: str = "fine-tuning with teacher",
) -> dict:
    """Fine-tune ``model`` in place with the frozen ``teacher``; returns ``{"steps", "epochs", "history",
    "seconds"}`` where ``history`` holds each epoch's token-weighted mean ``loss``, ``ce`` and ``kd``.

    ``batches(epoch)`` yields ``(inputs, targets)``: ``model(*inputs)`` and ``teacher(*inputs)`` give logits
    ``(B, L, V)`` for ``targets`` ``(B, L)`` (padded with ``pad_id``). ``student_view(inputs, generator)``,
    when given, is what the student reads instead (data augmentation); the teacher always reads ``inputs``.
    Adam with the gradient norm clipped at ``clip_norm``, at a constant ``lr`` (``lr_schedule="constant"``) or
    decaying from ``lr`` to 0 along a half cosine over ``total_steps`` steps (``"cosine"``; ``total_steps`` is
    then required: the batches of all epochs together; the rate stays 0 for steps beyond them). A decaying
    rate lets the student settle where a constant one leaves it moving; the student trains in train
    mode (dropout on), the teacher runs in eval mode without gradients and is left as it was. Everything random
    (dropout, ``student_view``) is seeded by ``(seed, epoch)``; ``threads`` fixes torch's thread count during
    the run (``None``: unchanged), so that the result does not depend on the machine's load.
    """
    from tqdm.auto import tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    lr = _check(lr, "lr", 0.0, True)
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if lr_schedule == "cosine" and (
        isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
    ):
        raise ValueError(
            f"lr_schedule='cosine' needs total_steps, an int >= 1 (the batches of all epochs), got {total_steps!r}"
        )
    clip_norm = _check(clip_norm, "clip_norm", 0.0, True)
    kd_weight = _check(kd_weight, "kd_weight", 0.0, False)
    task_weight = _check(task_weight, "task_weight", 0.0, False)
    if kd_weight == 0 and task_weight == 0:
        raise ValueError("kd_weight and task_weight are both 0: nothing to train on")
    if model is teacher:
        raise ValueError("the student and the teacher are the same module; pass a copy as the student")
    kd = KDLoss(temperature=temperature)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    teacher_was_training, student_was_training = teacher.training, model.training
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)

    def rate(step: int) -> float:
        if lr_schedule == "constant":
            return lr
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    history, steps = [], 0
    start = time.perf_counter()
    try:
        teacher.eval()
        for epoch in range(epochs):
            torch.manual_seed(seed * 1_000_003 + epoch)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            model.train()
            sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0}
            tokens = 0
            bar = tqdm(batches(epoch), desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False)
            for inputs, targets in bar:
                with torch.no_grad():
                    teacher_logits = teacher(*inputs)
                student_inputs = student_view(inputs, generator) if student_view is not None else inputs
                total, parts = sequence_distillation_loss(
                    model(*student_inputs),
                    teacher_logits,
                    targets,
                    kd,
                    kd_weight=kd_weight,
                    task_weight=task_weight,
                    pad_id=pad_id,
                )
                if not torch.isfinite(total):
                    raise FloatingPointError(
                        f"the distillation loss is {float(total)} at step {steps + 1}; lower lr ({lr:g})"
                    )
                for group in optimizer.param_groups:
                    group["lr"] = rate(steps)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                optimizer.step()
                steps += 1
                n = parts["tokens"]
                tokens += n
                sums["loss"] += float(total.detach()) * n
                sums["ce"] += parts["ce"] * n
                sums["kd"] += parts["kd"] * n
                bar.set_postfix(loss=f"{sums['loss'] / tokens:.4f}", kd=f"{sums['kd'] / tokens:.4f}")
            bar.close()
            if tokens == 0:
                raise ValueError(f"batches({epoch}) yielded no batch")
            history.append({"epoch": epoch + 1, **{k: v / tokens for k, v in sums.items()}, "tokens": tokens})
    finally:
        teacher.train(teacher_was_training)
        model.train(student_was_training)
        if threads is not None:
            torch.set_num_threads(old_threads)
    return {"steps": steps, "epochs": epochs, "history": history, "seconds": time.perf_counter() - start}
