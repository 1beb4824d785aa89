"""Training of :class:`~npuq.asr.model.AttentionASR` on the digits corpus.

Teacher-forced cross-entropy (optionally label-smoothed) with Adam, a linear warm-up then a cosine decay
of the learning rate, gradient-norm clipping, SpecAugment-style frequency and time masks, and batches of
utterances of similar length. After every epoch the dev WER (greedy) is measured; the best epoch's
weights are kept, and training stops early after ``patience`` epochs without a better dev WER.

Determinism: each epoch's batch order, masks and dropout come from generators seeded by ``(seed,
epoch)``, and the thread count is fixed, so a run resumed from its per-epoch state file (``state.safetensors``
in ``out_dir``) continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npuq.asr.decode import evaluate_wer
from npuq.asr.model import ASRConfig, AttentionASR, sequence_loss, teacher_forcing_batch

__all__ = ["TrainOptions", "evaluate_wer", "learning_rate", "plot_history", "spec_augment", "train_asr"]

STATE_FILE = "state.safetensors"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of a training run (validated)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 300
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    clip_norm: float = 5.0
    label_smoothing: float = 0.1
    spec_augment: bool = True
    freq_masks: int = 2
    freq_mask_width: int = 12
    time_masks: int = 2
    time_mask_width: int = 8
    # a uniform offset (in frames) added to each length before sorting into batches, so batches differ
    # between epochs while still holding utterances of similar length
    bucket_jitter: int = 30
    patience: int = 6
    seed: int = 0
    threads: int = 1
    dev_limit: int | None = None
    # stop after the epoch that crosses this many minutes of training (None: no limit)
    max_minutes: float | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainOptions.{name} must be an int >= 1, got {value!r}")
        for name in (
            "warmup_steps",
            "freq_masks",
            "freq_mask_width",
            "time_masks",
            "time_mask_width",
            "bucket_jitter",
            "seed",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainOptions.{name} must be an int >= 0, got {value!r}")
        for name in ("lr", "clip_norm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"TrainOptions.{name} must be a finite number > 0, got {value!r}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"TrainOptions.final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TrainOptions.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainOptions.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"TrainOptions.max_minutes must be > 0 or None, got {self.max_minutes}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def learning_rate(options: TrainOptions, step: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine from ``lr`` to ``lr * final_lr_fraction``."""
    if options.warmup_steps and step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    span = max(1, total_steps - options.warmup_steps)
    progress = min(1.0, (step - options.warmup_steps) / span)
    floor = options.final_lr_fraction
    return options.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def spec_augment(
    features: torch.Tensor, lengths: torch.Tensor, options: TrainOptions, generator: torch.Generator
) -> torch.Tensor:
    """A copy of the padded batch with random bands of mel bins and runs of frames set to 0 (the mean of
    utterance-normalized features), each utterance its own; time masks stay inside the utterance."""
    out = features.clone()
    batch, _, mels = out.shape

    def draw(high: int) -> int:
        return int(torch.randint(0, max(1, high), (1,), generator=generator))

    for k in range(batch):
        length = int(lengths[k])
        for _ in range(options.freq_masks):
            width = draw(options.freq_mask_width + 1)
            start = draw(mels - width + 1)
            out[k, :, start : start + width] = 0.0
        for _ in range(options.time_masks):
            # a mask never covers more than a fifth of a short utterance
            width = min(draw(options.time_mask_width + 1), length // 5)
            start = draw(length - width + 1)
            out[k, start : start + width, :] = 0.0
    return out


def _batches(lengths: np.ndarray, options: TrainOptions, epoch: int) -> list[np.ndarray]:
    rng = np.random.default_rng([options.seed, epoch])
    keys = lengths + rng.uniform(0, options.bucket_jitter, size=len(lengths))
    order = np.argsort(keys, kind="stable")
    batches = [order[i : i + options.batch_size] for i in range(0, len(order), options.batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ------------------------------------------------------------------------------------------ state


def _save_state(path: Path, model, best_model, optimizer, progress: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best_model.state_dict().items()})
    optimizer_state = optimizer.state_dict()
    scalars = {}
    for pid, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {
        "progress": json.dumps(progress),
        "optimizer_scalars": json.dumps(scalars),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def _load_state(path: Path, model, best_model, optimizer) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best_model.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("best.")})
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                pid, name = key[6:].split(".", 1)
                state.setdefault(int(pid), {})[name] = value
        for pid, entries in json.loads(meta["optimizer_scalars"]).items():
            state.setdefault(int(pid), {}).update(entries)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        return json.loads(meta["progress"])
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{path}: cannot resume from this state file ({exc}); it belongs to another run or "
            "is damaged: delete it to start over"
        ) from exc


# ------------------------------------------------------------------------------------------ loop


def train_asr(
    train_split,
    dev_split,
    config: ASRConfig | None = None,
    options: TrainOptions | None = None,
    out_dir=None,
    resume: bool = True,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    plot: bool = True,
) -> dict:
    """Train a new :class:`AttentionASR` on ``train_split`` and select its epoch on ``dev_split`` (both
    :class:`npuq.speech.DigitsSplit` loaded with ``normalize=config.normalize``).

    With ``out_dir``: the state after every epoch (resumed from when ``resume``), ``history.json`` and,
    with ``plot``, ``learning_curve.png``. ``stop_after_epoch``: return once that many epochs are done, leaving the run
    to be resumed (a run in slices). Returns ``{"model": best model (eval mode), "history": [...],
    "best_epoch", "best_dev_wer", "epochs_run", "seconds", "stopped": why}``.
    """
    config = config or ASRConfig()
    options = options or TrainOptions()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        return _train(train_split, dev_split, config, options, out_dir, resume, progress, stop_after_epoch, plot)
    finally:
        torch.set_num_threads(old_threads)


def _train(train_split, dev_split, config, options, out_dir, resume, progress, stop_after_epoch, plot) -> dict:
    from tqdm.auto import tqdm

    if len(train_split) < 1 or len(dev_split) < 1:
        raise ValueError(f"need training and dev utterances, got {len(train_split)} and {len(dev_split)}")
    torch.manual_seed(options.seed)
    model = AttentionASR(config)
    best_model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    lengths = np.array([len(f) for f in train_split.features])
    steps_per_epoch = math.ceil(len(lengths) / options.batch_size)
    total_steps = options.epochs * steps_per_epoch

    out = Path(out_dir) if out_dir is not None else None
    state_path = out / STATE_FILE if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {
        "epoch": 0,
        "history": [],
        "best_epoch": 0,
        "best_dev_wer": float("inf"),
        "seconds": 0.0,
        "stopped": None,
    }
    if state_path is not None and resume and state_path.exists():
        done = _load_state(state_path, model, best_model, optimizer)
        # the time limit only decides where a run stops, not what an epoch computes, so it may change
        settings = {k: v for k, v in options.to_dict().items() if k != "max_minutes"}
        previous = {k: v for k, v in (done.get("options") or {}).items() if k != "max_minutes"}
        if done.get("config") != config.to_dict() or previous != settings:
            raise ValueError(
                f"{state_path} was written by a run with another config or options; delete it or pass resume=False"
            )
    history = done["history"]
    started = time.perf_counter() - done["seconds"]
    stopped = done.get("stopped")
    epoch = done["epoch"]
    last_epoch = options.epochs if stop_after_epoch is None else min(options.epochs, stop_after_epoch)
    while stopped is None and epoch < last_epoch:
        # everything random in an epoch is seeded by (seed, epoch), so resuming reproduces it
        torch.manual_seed(options.seed * 1_000_003 + epoch)
        masks = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
        model.train()
        total_loss, total_tokens = 0.0, 0
        batches = _batches(lengths, options, epoch)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{options.epochs}", disable=not progress, leave=False)
        for i, indices in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = learning_rate(options, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = train_split.collate(indices.tolist(), add_sos=True, add_eos=True)
            features, feature_lengths = batch["features"], batch["feature_lengths"]
            if options.spec_augment:
                features = spec_augment(features, feature_lengths, options, masks)
            inputs, targets = teacher_forcing_batch(batch)
            logits = model(features, feature_lengths, inputs)
            loss = sequence_loss(logits, targets, options.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.clip_norm)
            optimizer.step()
            tokens = int((targets != 0).sum())
            total_loss += loss.detach().item() * tokens
            total_tokens += tokens
            bar.set_postfix(loss=f"{total_loss / total_tokens:.3f}", lr=f"{lr:.2e}")
        bar.close()
        dev = evaluate_wer(model, dev_split, beam=1, limit=options.dev_limit)
        epoch += 1
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch,
            "train_loss": total_loss / total_tokens,
            "lr": lr,
            "dev_wer": dev["wer"],
            "dev_cer": dev["cer"],
            "seconds": round(seconds, 1),
        }
        history.append(record)
        if dev["wer"] < done["best_dev_wer"]:
            done["best_dev_wer"], done["best_epoch"] = dev["wer"], epoch
            best_model.load_state_dict(model.state_dict())
        if progress:
            mark = " *" if done["best_epoch"] == epoch else ""
            print(
                f"epoch {epoch}: train loss {record['train_loss']:.4f}, dev WER {dev['wer']:.4f} "
                f"CER {dev['cer']:.4f}, lr {lr:.2e}, {seconds:.0f} s{mark}",
                flush=True,
            )
        if epoch - done["best_epoch"] >= options.patience:
            stopped = f"no better dev WER for {options.patience} epochs"
        elif options.max_minutes is not None and seconds > 60 * options.max_minutes and epoch < options.epochs:
            stopped = f"time limit of {options.max_minutes:g} minutes"
        done.update(
            {
                "epoch": epoch,
                "history": history,
                "seconds": seconds,
                "stopped": stopped,
                "config": config.to_dict(),
                "options": options.to_dict(),
            }
        )
        if state_path is not None:
            _save_state(state_path, model, best_model, optimizer, done)
            (out / HISTORY_FILE).write_text(json.dumps(history, indent=1) + "\n")
            if plot:
                plot_history(history, out / "learning_curve.png")
    best_model.eval()
    return {
        "model": best_model,
        "history": history,
        "best_epoch": done["best_epoch"],
        "best_dev_wer": done["best_dev_wer"],
        "epochs_run": epoch,
        "seconds": done["seconds"],
        "stopped": stopped
        or (
            "all epochs run"
            if epoch >= options.epochs
            else f"stopped after epoch {epoch} of {options.epochs} (stop_after_epoch)"
        ),
    }


def plot_history(history: list, path) -> None:
    """Training loss and dev WER per epoch, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [r["epoch"] for r in history]
    fig, loss_axis = plt.subplots(figsize=(6, 3.5))
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "o-", color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss (label-smoothed CE)", color="tab:blue")
    wer_axis = loss_axis.twinx()
    wer_axis.plot(epochs, [100 * r["dev_wer"] for r in history], "s-", color="tab:red", label="dev WER")
    wer_axis.set_ylabel("dev WER (%), greedy", color="tab:red")
    wer_axis.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
