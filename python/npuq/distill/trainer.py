"""The training loop every distillation process shares: data order, learning-rate schedule,
checkpoints (safetensors) and resumption, metrics, and data-parallel training under torchrun.

A process describes one *run* as a :class:`Learner`: the modules it trains (and checkpoints), their
optimizers, and a ``step(x, y)`` that computes the losses, back-propagates and returns the values to
log. :func:`fit` drives it.

Data order: each epoch's order is ``torch.randperm`` seeded by ``(seed, epoch)`` through a
``DistributedSampler`` (one replica in a single process), so an interrupted run resumed at an epoch
boundary sees exactly the batches the uninterrupted run would, and under ``torchrun`` the union of
the ranks' local batches at step *k* is the single-process global batch *k*.

Checkpoints: after every epoch, written atomically (a temporary file in the same folder, flushed to disk,
renamed over the old one: a run killed at any moment leaves the previous checkpoint or the new one). Each
records the settings that decide the result (``optim``, the seed, the number of training samples); a
resume with other settings is a :class:`ResumeError` naming them, except a change of ``optim.epochs``
under the constant schedule (the learning rate of a step and the order of an epoch do not depend on the
total, so the resumed run ends exactly as a clean one with the new total), to no fewer epochs than are done.
A truncated or corrupt checkpoint is a :class:`ResumeError` naming the file.

Distributed: under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1) :func:`fit` joins the process
group (gloo on CPU, NCCL on CUDA), splits each global batch across ranks, averages the gradients
(all-reduce after backward, before the optimizer step; with equal local batches this is the gradient
of the global batch) and broadcasts rank 0's buffers (BatchNorm statistics) after every step, so the
replicas stay identical. Only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")


@dataclass
class OptimConfig:
    """Optimizer and schedule of a run (validated)."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    epochs: int = 5
    batch_size: int = 128
    schedule: str = "cosine"

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for key in ("lr", "momentum", "weight_decay"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"optim.{key} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        for key in ("epochs", "batch_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"optim.{key} must be an integer >= 1, got {v!r}")

    def make(self, params) -> torch.optim.Optimizer:
        params = [p for p in params if p.requires_grad]
        if self.name == "sgd":
            return torch.optim.SGD(
                params,
                lr=self.lr,
                momentum=self.momentum,
                nesterov=self.nesterov and self.momentum > 0,
                weight_decay=self.weight_decay,
            )
        cls = torch.optim.Adam if self.name == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class Learner:
    """What one run trains: ``modules`` (checkpointed by name), their ``optimizers`` (by name), a
    ``step(x, y) -> {name: float}`` that does forward, backward and returns the values to log (it must
    not call ``optimizer.step()``: :func:`fit` does, after averaging gradients across ranks), and
    ``evaluate() -> {name: float}`` run after each epoch."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step: Callable[[torch.Tensor, torch.Tensor], dict]
    evaluate: Callable[[], dict] = field(default=lambda: {})
    # check(images, labels) on a few training samples before the first step: raises ValueError when the
    # data cannot go through the models (wrong shape, too few classes), so nothing trains on bad input
    check: Callable[[torch.Tensor, torch.Tensor], None] | None = None


def check_training_data(images, labels) -> None:
    """Types and shapes :func:`fit` needs: float images (N, ...) and integer class labels (N,) >= 0."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() < 2:
        raise ValueError(
            f"training images must be a floating-point torch tensor (N, C, H, W), got "
            f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
        )
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dim() != 1
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise ValueError(
            f"training labels must be an integer torch tensor (N,) of class indices, got "
            f"{type(labels).__name__} {getattr(labels, 'dtype', '')} {tuple(getattr(labels, 'shape', ()))}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"training labels must be class indices >= 0, found {int(labels.min())}")
    if not torch.isfinite(images).all():
        raise ValueError("training images contain NaN or infinity")


def probe(modules, run: Callable[[], object], what: str) -> None:
    """Run ``run()`` without gradients, every module in eval mode (batch-norm statistics untouched),
    turning a failure into a ValueError that says which ``what`` did not fit."""
    flags = [(m, m.training) for top in modules for m in top.modules()]
    for m, _ in flags:
        m.training = False
    try:
        with torch.no_grad():
            run()
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"{what} does not go through the models ({exc})") from exc
    finally:
        for m, was in flags:
            m.training = was


# ------------------------------------------------------------------------------------------- distributed
def world() -> tuple[int, int]:
    """(rank, world size), joining the process group when launched by torchrun."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _unique(tensors):
    """Each tensor once (a learner's modules may share submodules, e.g. an objective holds the student)."""
    seen = set()
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def _average_gradients(modules, world_size: int) -> None:
    if world_size == 1:
        return
    for p in _unique(p for m in modules for p in m.parameters()):
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world_size)


def _broadcast_buffers(modules, world_size: int) -> None:
    if world_size == 1:
        return
    for b in _unique(b for m in modules for b in m.buffers()):
        dist.broadcast(b, src=0)


# ------------------------------------------------------------------------------------------- files
class ResumeError(ValueError):
    """A run folder cannot be resumed: a saved file is unreadable, or it was written with other settings.
    The message names the file or the differing settings and says how to proceed."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never a part:
    a temporary file in the same folder (same file system, so the rename is atomic), flushed to disk,
    then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique temporary name: ranks or runs writing the same file at once do not write into each other's;
    # mode 0o666 lets the umask decide the permissions, as for any file the user creates
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points to it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # makes the rename itself durable; not every platform can open a folder (Windows), which is fine
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, learner: Learner, epoch: int, history: list, extra: dict | None = None) -> None:
    """Modules' state and optimizers' state in one safetensors file; the rest as JSON metadata.
    Written atomically (:func:`atomic_write_bytes`): a run killed while saving keeps its previous checkpoint."""
    from safetensors.torch import save

    tensors, meta = {}, {}
    for name, m in learner.modules.items():
        for k, v in m.state_dict().items():
            tensors[f"module.{name}.{k}"] = v.detach().cpu().contiguous()
    opt_meta = {}
    for name, opt in learner.optimizers.items():
        sd = opt.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim.{name}.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    opt_meta.setdefault(name, {}).setdefault(str(pid), {})[k] = v
        opt_meta.setdefault(name, {})["__param_groups__"] = sd["param_groups"]
    meta["optimizers"] = json.dumps(opt_meta)
    meta["epoch"] = str(epoch)
    meta["history"] = json.dumps(history)
    meta["extra"] = json.dumps(extra or {})
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _unreadable(path: Path, what: str, exc) -> ResumeError:
    return ResumeError(
        f"{path}: the {what} is unreadable or truncated ({exc}); delete it to redo that training "
        "from its start (the run's other files are kept), or use another output folder"
    )


def read_checkpoint_info(path: str | os.PathLike) -> dict:
    """``{"epoch": n, "history": [...], "extra": {...}}`` of a checkpoint, from its header only (no tensors
    are read). Raises :class:`ResumeError` for a truncated or corrupt file."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        info = {
            "epoch": int(meta["epoch"]),
            "history": json.loads(meta.get("history", "[]")),
            "extra": json.loads(meta.get("extra", "{}")),
        }
    except Exception as exc:  # safetensors raises its own error types for damaged files; KeyError: no epoch
        raise _unreadable(path, "checkpoint", exc) from exc
    return info


def load_checkpoint(path: Path, learner: Learner) -> tuple[int, list]:
    """Restore ``learner`` from :func:`save_checkpoint`'s file; returns (epochs done, history).
    Raises :class:`ResumeError` for a damaged file or one written for other modules."""
    from safetensors import safe_open

    path = Path(path)
    info = read_checkpoint_info(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        opt_meta = json.loads(meta.get("optimizers", "{}"))
    except Exception as exc:
        raise _unreadable(path, "checkpoint", exc) from exc
    for name, m in learner.modules.items():
        prefix = f"module.{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing = set(m.state_dict()) - set(state)
        if missing:
            raise ResumeError(
                f"{path}: checkpoint lacks {len(missing)} tensors of module '{name}' (e.g. "
                f"{sorted(missing)[:3]}); it belongs to another configuration: use another output "
                "folder, or delete the checkpoint to train from the start"
            )
        m.load_state_dict(state)
    for name, opt in learner.optimizers.items():
        om = opt_meta.get(name, {})
        state = {}
        for k, v in tensors.items():
            if k.startswith(f"optim.{name}."):
                pid, key = k[len(f"optim.{name}.") :].split(".", 1)
                state.setdefault(int(pid), {})[key] = v
        for pid, st in om.items():
            if pid != "__param_groups__":
                state.setdefault(int(pid), {}).update(st)
        if "__param_groups__" not in om:
            raise ResumeError(
                f"{path}: checkpoint has no state for optimizer '{name}'; it belongs to another "
                "configuration: use another output folder, or delete the checkpoint"
            )
        opt.load_state_dict({"state": state, "param_groups": om["__param_groups__"]})
    return info["epoch"], info["history"]


def run_settings(optim: OptimConfig, seed: int, samples: int) -> dict:
    """What decides a run's result besides the learner itself, as recorded in its checkpoints."""
    return {"optim": asdict(optim), "seed": int(seed), "samples": int(samples)}


def check_resumable(path: Path, info: dict, settings: dict) -> None:
    """Refuse to resume the checkpoint at ``path`` (``info`` from :func:`read_checkpoint_info`) with other
    ``settings`` (:func:`run_settings`) than it was written with, unless the resumed run ends exactly as a
    clean run with the new settings would: only ``optim.epochs`` may change, with a constant learning rate
    (the data order of an epoch depends on the seed and the epoch only), to no fewer epochs than are done."""
    saved = info["extra"].get("settings")
    if saved is None:  # written before checkpoints recorded their settings
        warnings.warn(
            f"{path}: the checkpoint does not record the settings it was trained with; resuming it "
            "without checking them",
            stacklevel=3,
        )
        return
    old, new = flatten(json.loads(json.dumps(saved))), flatten(json.loads(json.dumps(settings)))
    differing = [k for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
    done, wanted = info["epoch"], new["optim.epochs"]
    how = (
        f"use another output folder, or delete {path} (and the run's other files) to train with the new "
        "settings from the start"
    )
    if any(k != "optim.epochs" for k in differing):
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing)
        raise ResumeError(
            f"{path}: the checkpoint was trained with other settings ({changes}); resuming it would "
            f"not give the result of the settings asked for: {how}"
        )
    if done > wanted:
        raise ResumeError(
            f"{path}: the checkpoint holds {done} epochs, more than the {wanted} asked for; the "
            f"{wanted}-epoch state is not kept: {how}"
        )
    if differing and new["optim.schedule"] != "constant":
        raise ResumeError(
            f"{path}: the run was started for {old['optim.epochs']} epochs and is asked for "
            f"{wanted} now; with the {new['optim.schedule']} schedule the learning rate of every "
            f"step depends on the total, so resuming cannot give what a clean {wanted}-epoch run "
            f"gives (only schedule 'constant' can change its epochs): {how}"
        )


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts and lists as ``{"a.b[0].c": leaf}``: the names the settings checks report."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        out = {f"{prefix}.length": len(value)}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


# ------------------------------------------------------------------------------------------- the loop
def fit(
    learner: Learner,
    images: torch.Tensor,
    labels: torch.Tensor,
    optim: OptimConfig,
    *,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    desc: str = "training",
    max_steps: int | None = None,
) -> dict:
    """Train ``learner`` for ``optim.epochs`` epochs over ``(images, labels)``.

    With ``out_dir``: a checkpoint after every epoch (``checkpoint.safetensors``), resumed from when
    ``resume`` (the default), and ``history.json`` with the per-epoch metrics; both written atomically.
    The checkpoint records ``optim``, ``seed`` and the number of training samples: resuming with other
    values is a :class:`ResumeError` (see :func:`check_resumable`). Returns ``{"history": [...],
    "steps": n, "seconds": s, "world_size": w, "start_epoch": e}`` (``e``: the epochs found done).
    """
    from torch.utils.data import DistributedSampler

    check_training_data(images, labels)
    if learner.check is not None and images.shape[0]:
        # a few samples, including the one with the largest label (class count vs model outputs)
        idx = torch.cat([torch.arange(min(7, images.shape[0])), labels.argmax().view(1)])
        learner.check(images[idx], labels[idx])
    rank, world_size = world()
    if optim.batch_size % world_size:
        raise ValueError(f"batch_size {optim.batch_size} is not divisible by the {world_size} processes")
    local = optim.batch_size // world_size
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / "checkpoint.safetensors" if out is not None else None
    # the schedule scales the learning rates the optimizers were built with (a checkpoint holds scaled ones)
    base_lrs = {name: [g["lr"] for g in opt.param_groups] for name, opt in learner.optimizers.items()}
    start_epoch, history = 0, []
    settings = run_settings(optim, seed, images.shape[0])
    if ckpt is not None and resume and ckpt.exists():
        check_resumable(ckpt, read_checkpoint_info(ckpt), settings)
        start_epoch, history = load_checkpoint(ckpt, learner)
    sampler = DistributedSampler(
        range(images.shape[0]), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // local
    if steps_per_epoch == 0:
        raise ValueError(f"no full batch of {optim.batch_size} in {images.shape[0]} training images")
    total_steps = optim.epochs * steps_per_epoch
    modules = list(learner.modules.values())
    _broadcast_parameters(modules, world_size)
    t0 = time.perf_counter()
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, optim.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)))
        for m in modules:
            m.train()
        sums: dict[str, float] = {}
        iterator = range(steps_per_epoch)
        if progress and rank == 0:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"{desc} {epoch + 1}/{optim.epochs}", leave=False, mininterval=1.0)
        for i in iterator:
            scale = 0.5 * (1.0 + math.cos(math.pi * step / total_steps)) if optim.schedule == "cosine" else 1.0
            for name, opt in learner.optimizers.items():
                for g, lr in zip(opt.param_groups, base_lrs[name]):
                    g["lr"] = lr * scale
                opt.zero_grad(set_to_none=True)
            idx = order[i * local : (i + 1) * local]
            values = learner.step(images[idx], labels[idx])
            _average_gradients(modules, world_size)
            for opt in learner.optimizers.values():
                opt.step()
            _broadcast_buffers(modules, world_size)
            step += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if max_steps is not None and step >= max_steps:
                break
        record = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0}
        record.update({f"train_{k}": v / max(i + 1, 1) for k, v in sums.items()})
        record.update(learner.evaluate())
        history.append(record)
        if out is not None and rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt, learner, epoch + 1, history, extra={"settings": settings})
            atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
        if max_steps is not None and step >= max_steps:
            break
    if world_size > 1:
        dist.barrier()
    return {
        "history": history,
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "world_size": world_size,
        "start_epoch": start_epoch,
    }


def _broadcast_parameters(modules, world_size: int) -> None:
    if world_size == 1:
        return
    for t in _unique(t for m in modules for t in (*m.parameters(), *m.buffers())):
        dist.broadcast(t.data, src=0)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (model put in eval mode, then restored)."""
    from npuq.evaluation import top1_accuracy

    n = images.shape[0]
    return top1_accuracy(
        model, ((images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, n, batch_size))
    )


__all__ = [
    "Learner",
    "OPTIMIZERS",
    "OptimConfig",
    "ResumeError",
    "SCHEDULES",
    "accuracy",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_resumable",
    "fit",
    "load_checkpoint",
    "read_checkpoint_info",
    "run_settings",
    "save_checkpoint",
    "world",
]
