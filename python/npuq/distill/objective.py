"""The distillation objective: the student's task loss plus weighted knowledge terms from its teachers.

A :class:`Term` says which knowledge is transferred and how: a loss module (``npuq.distill.losses``),
its weight, and where the loss reads the student's and the teachers' tensors: ``"logits"`` (the model
output) or a module path tapped with forward hooks (``npuq.distill.taps``), so unmodified models work.

Several teachers: each term is computed against every teacher and the values are combined with the
teachers' weights (normalized to sum 1), or, with ``ensemble="logits"``, logit terms read the weighted
average of the teachers' logits (one soft target). Teachers are frozen (``requires_grad=False``, eval
mode) and run under ``torch.no_grad``; they may see another input than the student (privileged
information: ``forward(x, y, x_teacher=clean_x)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq.distill.taps import FeatureTaps

LOGITS = "logits"


@dataclass
class Term:
    """One knowledge term: ``weight * loss(student tensor, teacher tensor)``."""

    loss: nn.Module
    weight: float = 1.0
    student: str = LOGITS
    teacher: str = LOGITS
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.loss, nn.Module):
            raise TypeError(
                f"Term.loss must be a torch.nn.Module (see npuq.distill.losses), got {type(self.loss).__name__}"
            )
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"Term.weight must be a finite number >= 0, got {self.weight!r}")
        if not self.name:
            self.name = (
                type(self.loss).__name__
                if self.student == LOGITS
                else f"{type(self.loss).__name__}({self.student}->{self.teacher})"
            )


class DistillationObjective(nn.Module):
    """``task_weight * CE(student(x), y) + sum_k weight_k * term_k``.

    Args:
        student: the model being trained.
        teachers: one model or a list (frozen here).
        terms: the knowledge terms (may be empty: plain training of the student).
        task_weight: weight of the cross-entropy with the labels (>= 0).
        teacher_weights: one non-negative weight per teacher (default: equal); normalized to sum 1.
        ensemble: ``"loss"`` (each term against each teacher, weighted) or ``"logits"`` (logit terms
            read the weighted mean of the teachers' logits).

    ``forward(x, y, x_teacher=None)`` returns ``(total, parts)``: the scalar to minimize and a dict of
    the unweighted values (``"task"`` and each term's name) for logging. The loss modules' own
    parameters (e.g. hint adapters) are trained with the student: pass ``objective.trainable_parameters()``
    to the optimizer.
    """

    def __init__(
        self,
        student: nn.Module,
        teachers=(),
        terms=(),
        *,
        task_weight: float = 1.0,
        teacher_weights=None,
        ensemble: str = "loss",
    ):
        super().__init__()
        teachers = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
        terms = list(terms)
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
        if not (isinstance(task_weight, (int, float)) and math.isfinite(task_weight) and task_weight >= 0):
            raise ValueError(f"task_weight must be a finite number >= 0, got {task_weight!r}")
        if terms and not teachers:
            raise ValueError(f"{len(terms)} knowledge term(s) but no teacher")
        if ensemble not in ("loss", "logits"):
            raise ValueError(f"ensemble must be 'loss' or 'logits', got {ensemble!r}")
        if teacher_weights is None:
            teacher_weights = [1.0] * len(teachers)
        teacher_weights = [float(w) for w in teacher_weights]
        if len(teacher_weights) != len(teachers):
            raise ValueError(f"{len(teacher_weights)} teacher weights for {len(teachers)} teachers")
        if any(not math.isfinite(w) or w < 0 for w in teacher_weights) or (teachers and sum(teacher_weights) <= 0):
            raise ValueError(f"teacher_weights must be >= 0 with a positive sum, got {teacher_weights}")
        total = sum(teacher_weights) or 1.0
        self.teacher_weights = [w / total for w in teacher_weights]
        self.student = student
        self.teachers = teachers  # a plain list: not registered, so not in state_dict / parameters
        for t in teachers:
            t.eval()
            for p in t.parameters():
                p.requires_grad_(False)
        self.terms = nn.ModuleList([t.loss for t in terms])  # registers adapters as trainable submodules
        self.term_specs = terms
        self.task_weight = float(task_weight)
        self.ensemble = ensemble
        student_paths = sorted({t.student for t in terms if t.student != LOGITS})
        teacher_paths = sorted({t.teacher for t in terms if t.teacher != LOGITS})
        # taps are created (and module paths checked, with close names on a typo) before any training
        self._student_taps = FeatureTaps(student, student_paths) if student_paths else None
        self._teacher_taps = [FeatureTaps(t, teacher_paths) for t in teachers] if teacher_paths else []

    def trainable_parameters(self):
        """The student's parameters and those of the loss modules (adapters)."""
        yield from self.student.parameters()
        yield from self.terms.parameters()

    def teacher_outputs(self, x: torch.Tensor):
        """Each teacher's logits and tapped features on ``x`` (no gradient)."""
        outs = []
        with torch.no_grad():
            for i, teacher in enumerate(self.teachers):
                teacher.eval()
                logits = teacher(x)
                feats = dict(self._teacher_taps[i].outputs()) if self._teacher_taps else {}
                outs.append((logits, feats))
        return outs

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_teacher: torch.Tensor | None = None):
        logits = self.student(x)
        parts = {"task": F.cross_entropy(logits, y)}
        total = self.task_weight * parts["task"]
        if not self.term_specs:
            return total, parts
        s_feats = dict(self._student_taps.outputs()) if self._student_taps else {}
        t_outs = self.teacher_outputs(x if x_teacher is None else x_teacher)
        for spec in self.term_specs:
            s = logits if spec.student == LOGITS else s_feats[spec.student]
            if spec.teacher == LOGITS and self.ensemble == "logits":
                target = sum(w * out[0] for w, out in zip(self.teacher_weights, t_outs))
                value = spec.loss(s, target)
            else:
                value = sum(
                    w * spec.loss(s, out[0] if spec.teacher == LOGITS else out[1][spec.teacher])
                    for w, out in zip(self.teacher_weights, t_outs)
                )
            parts[spec.name] = value
            total = total + spec.weight * value
        return total, parts

    def remove_taps(self) -> None:
        for taps in ([self._student_taps] if self._student_taps else []) + self._teacher_taps:
            taps.remove()


def tap_channels(model: nn.Module, path: str, probe: torch.Tensor) -> int:
    """Channel count (dim 1) of what ``model`` produces at ``path`` (``"logits"``: the class count) on a
    probe batch: what a hint adapter must be built for before the optimizer is."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            if path == LOGITS:
                return int(model(probe).shape[1])
            with FeatureTaps(model, [path]) as taps:
                model(probe)
                return int(taps[path].shape[1])
    finally:
        model.train(was)


__all__ = ["LOGITS", "DistillationObjective", "Term", "tap_channels"]
