"""The task-specific parts of a rank search: which model, how its error is measured, how it is fine-tuned.

A config's ``[task]`` table names a registered task (``name = "fashion_mnist"``) and gives that task's own
options; everything else in a config is task-independent. A task is a class registered in
:data:`npuq.registry.SEARCH_TASKS` (``@SEARCH_TASKS.register("name")``), built from its validated options, with

* ``load_model() -> nn.Module``: the original model;
* ``evaluate(model) -> float``: the error on the development data that search decisions use (lower is
  better: top-1 error for a classifier, WER for speech);
* ``test_error(model) -> float | None``: the error on held-out test data, reported only;
* ``finetune(model, teacher) -> nn.Module``: fine-tuning of a compressed model with the original as teacher;
* ``describe() -> dict``: what was loaded (for the logs).

``fashion_mnist`` is defined here: a shipped Fashion-MNIST MobileNet checkpoint (or a file written by
``npuq lrf apply``), top-1 error on a development split cut from the end of the *training* images (so that
the test set stays out of every decision), and :func:`~npuq.distill.processes.finetune_with_teacher` on
training images outside that split. ``asr_digits`` (the speech recognizer of :mod:`npuq.asr`, WER as the
error) is defined in :mod:`npuq.lrf.search.asr_task`, which the registry imports on the first lookup of a
task; it loads no speech data until it is used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from npuq.config import ConfigError, fill
from npuq.registry import SEARCH_TASKS

__all__ = ["FashionMnistTask", "TASKS", "load_lrf_checkpoint", "make_task", "register_task", "save_lrf_checkpoint"]


class _Tasks(Mapping):
    """The registered tasks by name, read-only: a view of :data:`npuq.registry.SEARCH_TASKS`."""

    def __getitem__(self, name: str) -> type:
        if name not in SEARCH_TASKS:
            raise KeyError(name)
        return SEARCH_TASKS.get(name)

    def __iter__(self):
        return iter(SEARCH_TASKS.names())

    def __len__(self) -> int:
        return len(SEARCH_TASKS)

    def __repr__(self) -> str:
        return f"TASKS({dict(self)!r})"


TASKS = _Tasks()


def register_task(name: str):
    """Class decorator, the same as ``@SEARCH_TASKS.register(name)``: make a task class available as
    ``[task] name = "<name>"``. The class has an ``Options`` dataclass (the table's other keys) and is
    constructed as ``cls(options)``."""
    return SEARCH_TASKS.register(name)


def make_task(name: str, options: dict | None = None, where: str = "task"):
    """The task ``name`` built from its option table, checked by :func:`npuq.config.fill`."""
    if name not in SEARCH_TASKS:
        raise ConfigError(f"{where}.name: unknown task {name!r}; registered: {', '.join(sorted(SEARCH_TASKS))}")
    cls = SEARCH_TASKS.get(name)
    return cls(fill(cls.Options, options or {}, where))


# ------------------------------------------------------------------------------ factorized checkpoints
def save_lrf_checkpoint(model: nn.Module, path, metadata: dict, ranks: dict) -> None:
    """A factorized model as safetensors: its ``state_dict`` plus the metadata of the checkpoint it came from
    and ``lrf_ranks`` (JSON), from which :func:`load_lrf_checkpoint` rebuilds the structure."""
    from npuq.models.checkpoints import save_checkpoint

    keep = {k: v for k, v in metadata.items() if k not in ("history", "dead_channel_stats")}
    save_checkpoint(model, path, {**keep, "lrf_ranks": json.dumps(ranks)})


def load_lrf_checkpoint(name_or_path) -> tuple[nn.Module, dict]:
    """A shipped checkpoint, a ``.safetensors`` of ``scripts/train_fmnist.py``, or one written by
    ``npuq lrf apply`` / :func:`save_lrf_checkpoint` (factorized): ``(model in eval mode, metadata)``."""
    from safetensors.torch import load_file

    from npuq.lrf.factorize import factorize
    from npuq.models.checkpoints import (
        CheckpointMismatchError,
        build_model,
        load_checkpoint,
        read_metadata,
        resolve_checkpoint,
    )

    meta = read_metadata(name_or_path)
    if "lrf_ranks" not in meta:
        return load_checkpoint(name_or_path)
    path = resolve_checkpoint(name_or_path)
    try:
        ranks = json.loads(meta["lrf_ranks"])
    except json.JSONDecodeError as exc:
        raise CheckpointMismatchError(f"{path}: the lrf_ranks metadata is not valid JSON ({exc})") from None
    dense = build_model(meta["model"], width=float(meta["width"]))
    model = factorize(dense, ranks, above_break_even="ignore")
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(
            f"{path}: the tensors do not fit {meta['model']} factorized with its lrf_ranks ({str(exc).splitlines()[0]})"
        ) from None
    return model.eval(), meta


# ------------------------------------------------------------------------------------- Fashion-MNIST
@SEARCH_TASKS.register("fashion_mnist")
class FashionMnistTask:
    """A Fashion-MNIST classifier: error = 1 - top-1 accuracy."""

    @dataclass
    class Options:
        model: str = "mobilenet_v2_w0.5_sgd"  # a shipped checkpoint name or a .safetensors path
        dev_size: int = 2000  # development images: the last ones of the training split
        test_limit: int = 0  # test images for the reported test error (0: all 10,000)
        train_limit: int = 10000  # fine-tuning images: the first ones of the training split
        finetune_epochs: int = 1
        finetune_lr: float = 0.01
        batch_size: int = 128
        temperature: float = 4.0
        kd_weight: float = 0.9
        task_weight: float = 0.1
        eval_batch: int = 500
        progress: bool = True

        def __post_init__(self):
            for name in ("dev_size", "train_limit", "finetune_epochs", "batch_size", "eval_batch"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
            if self.test_limit < 0:
                raise ValueError(f"test_limit must be >= 0 (0: all), got {self.test_limit}")
            if self.dev_size + self.train_limit > 60000:
                raise ValueError(
                    f"dev_size + train_limit must be at most the 60000 training images, got "
                    f"{self.dev_size} + {self.train_limit}"
                )
            for name in ("finetune_lr", "temperature"):
                if getattr(self, name) <= 0:
                    raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
            for name in ("kd_weight", "task_weight"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def __init__(self, options: Options):
        self.options = options
        self._data = None

    def _split(self):
        if self._data is None:
            from npuq.data.fashion_mnist import fashion_mnist_tensors

            x, y = fashion_mnist_tensors("train")
            xt, yt = fashion_mnist_tensors("test")
            o = self.options
            dev = (x[-o.dev_size :], y[-o.dev_size :])
            train = (x[: o.train_limit], y[: o.train_limit])
            test = (xt[: o.test_limit], yt[: o.test_limit]) if o.test_limit else (xt, yt)
            self._data = {"dev": dev, "train": train, "test": test}
        return self._data

    def load_model(self) -> nn.Module:
        model, self.metadata = load_lrf_checkpoint(self.options.model)
        return model

    def _error(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        was = model.training
        model.eval()
        correct = 0
        step = self.options.eval_batch
        with torch.inference_mode():
            for i in range(0, images.shape[0], step):
                correct += int((model(images[i : i + step]).argmax(1) == labels[i : i + step]).sum())
        model.train(was)
        return 1.0 - correct / images.shape[0]

    def evaluate(self, model: nn.Module) -> float:
        return self._error(model, *self._split()["dev"])

    def test_error(self, model: nn.Module) -> float:
        return self._error(model, *self._split()["test"])

    def finetune(self, model: nn.Module, teacher: nn.Module) -> nn.Module:
        from npuq.distill.processes import finetune_with_teacher
        from npuq.distill.trainer import OptimConfig

        o = self.options
        images, labels = self._split()["train"]
        optim = OptimConfig(lr=o.finetune_lr, epochs=o.finetune_epochs, batch_size=o.batch_size)
        finetune_with_teacher(
            model,
            teacher,
            images,
            labels,
            optim=optim,
            temperature=o.temperature,
            kd_weight=o.kd_weight,
            task_weight=o.task_weight,
            progress=o.progress,
        )
        return model.eval()

    def describe(self) -> dict:
        meta = getattr(self, "metadata", {})
        return {
            "task": "fashion_mnist",
            **{f.name: getattr(self.options, f.name) for f in fields(self.options)},
            "checkpoint_test_accuracy": meta.get("test_accuracy"),
        }
