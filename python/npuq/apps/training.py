"""Deterministic training and evaluation of the example networks on Fashion-MNIST.

Two recipes, on purpose of different health:

``"sgd"``
    SGD with Nesterov momentum 0.9, lr 0.1 on a per-step cosine to 0, weight decay 4e-5 on
    conv/linear weights only (not BN, not biases). Gives well-conditioned weights.
``"adam-l2"``
    Adam lr 2e-3 (same cosine) with *coupled* L2 5e-4 on every parameter, BN included
    (``torch.optim.Adam(weight_decay=...)``). Adam divides the decay term by the gradient
    scale like the loss gradient, so parameters that get little loss gradient shrink at a pace
    set by the learning rate rather than by the small decay coefficient. Activations of many
    channels become tiny or always zero, the BatchNorm after the next (depthwise) conv sees a
    running variance near 0 and rescales by ``gamma / sqrt(var + eps)`` in the hundreds: after
    folding BN into the conv those channels' weights dwarf their neighbours', which is what
    breaks per-layer (per-tensor) weight quantization.

Runs are reproducible bit for bit on one machine: seeds for torch and numpy, a seeded data
order and augmentation stream, ``torch.use_deterministic_algorithms(True)`` and a fixed thread
count (thread count changes the order of float reductions, so it is recorded with the result).
"""

from __future__ import annotations

import contextlib
import math
import random
import time

import numpy as np
import torch
from torch import nn

RECIPES = ("sgd", "adam-l2")
DEFAULT_THREADS = 2

# threshold on BN running_var below which a channel is considered dead (its input is constant)
DEAD_VAR = 1e-4


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (call before building the model: it fixes the init)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(threads: int = DEFAULT_THREADS):
    """Deterministic kernels and a fixed intra-op thread count, restored on exit.

    Deterministic mode normally also fills every fresh tensor with NaN (to expose reads of
    uninitialised memory); that alone costs a quarter of a training step here, and nothing in
    this code reads uninitialised memory, so the filling is switched off.
    """
    import torch.utils.deterministic as det

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_fill = det.fill_uninitialized_memory  # type: ignore[attr-defined]  # a torch setting its stubs lack
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        det.fill_uninitialized_memory = old_fill  # type: ignore[attr-defined]
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def make_optimizer(model: nn.Module, recipe: str) -> torch.optim.Optimizer:
    """The optimizer of a recipe (see the module docstring)."""
    if recipe == "sgd":
        decay = [p for p in model.parameters() if p.ndim > 1]  # conv and linear weights
        no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN gamma/beta, biases
        groups = [{"params": decay, "weight_decay": 4e-5}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
    if recipe == "adam-l2":
        return torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=5e-4)
    raise ValueError(f"unknown recipe {recipe!r}; available: {', '.join(RECIPES)}")


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after ``pad`` pixels of background padding, and random horizontal flip.

    Vectorised over the batch and driven only by ``generator``, so it is deterministic. The
    padding value is the normalized value of a black pixel, i.e. real background.
    """
    from npuq.data import MEAN, STD

    n, _, h, w = images.shape
    padded = nn.functional.pad(images, (pad, pad, pad, pad), value=-MEAN / STD)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)[None, :]  # (n, h)
    cols = dx[:, None] + torch.arange(w)[None, :]  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def train(
    model: nn.Module,
    recipe: str = "sgd",
    epochs: int = 5,
    seed: int = 0,
    batch_size: int = 128,
    *,
    limit: int | None = None,
    root=None,
    augmentation: bool = False,
    threads: int = DEFAULT_THREADS,
    eval_loader=None,
    progress: bool = True,
    max_steps: int | None = None,
    channels_last: bool = True,
) -> dict:
    """Train ``model`` in place on the Fashion-MNIST training split; return a summary dict.

    ``limit`` trains on the first N images only; ``max_steps`` stops early (both for tests).
    ``eval_loader``, if given, is evaluated after each epoch (reported, never used to select).
    ``augmentation`` (random 2-px crop + flip) is off by default: in a 5-epoch budget these small
    networks underfit, and it cost MobileNetV1 0.5 about 1.8 points of test accuracy (89.3% vs
    91.1%).
    The learning rate follows a per-step cosine from the recipe's lr down to 0.
    ``channels_last`` trains in NHWC layout, where the CPU depthwise kernels are much faster;
    the model is returned in the default (NCHW) layout.
    """
    from tqdm import tqdm

    from npuq.data import fashion_mnist_loader

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    history = []
    start = time.perf_counter()
    with deterministic(threads):
        torch.manual_seed(seed)
        np.random.seed(seed)
        # drop_last: a one-image final batch would break BatchNorm in training mode
        loader = fashion_mnist_loader(
            "train", batch_size=batch_size, shuffle=True, seed=seed, limit=limit, root=root, drop_last=True
        )
        aug_gen = torch.Generator().manual_seed(seed + 1)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=layout)  # before the optimizer: may replace parameter storage
        optimizer = make_optimizer(model, recipe)
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        total_steps = epochs * len(loader)
        if total_steps == 0:
            raise ValueError(f"no full batch of {batch_size} in {limit} training images")
        loss_fn = nn.CrossEntropyLoss()
        step = 0
        for epoch in range(epochs):
            model.train()
            bar = tqdm(
                loader, desc=f"{recipe} epoch {epoch + 1}/{epochs}", disable=not progress, mininterval=2.0, leave=True
            )
            loss_sum, seen, correct = 0.0, 0, 0
            for images, labels in bar:
                scale = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                for group, lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = lr * scale
                if augmentation:
                    images = augment(images, aug_gen)
                images = images.contiguous(memory_format=layout)
                logits = model(images)
                loss = loss_fn(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += loss.item() * len(labels)
                seen += len(labels)
                correct += (logits.argmax(1) == labels).sum().item()
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
                if max_steps is not None and step >= max_steps:
                    break
            bar.close()
            record = {
                "epoch": epoch + 1,
                "seconds": time.perf_counter() - start,
                "loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
            }
            if eval_loader is not None:
                record["test_accuracy"] = evaluate(model, eval_loader)
            history.append(record)
            if progress:
                print(
                    f"epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"),
                    flush=True,
                )
            if max_steps is not None and step >= max_steps:
                break
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return {
        "recipe": recipe,
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "threads": threads,
        "augmentation": augmentation,
        "steps": step,
        "seconds": time.perf_counter() - start,
        "history": history,
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode, then restored) over ``loader``."""
    from npuq.evaluation import top1_accuracy

    return top1_accuracy(model, loader)


def _conv_bn_chains(model: nn.Module):
    """(conv name, bn name, activation name or None) for every conv whose output feeds only a
    BatchNorm2d, found on the torch.fx graph so that any module nesting works."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or not isinstance(modules[users[0].target], nn.BatchNorm2d):
            continue
        bn = users[0]
        act = None
        bn_users = list(bn.users)
        if (
            len(bn_users) == 1
            and bn_users[0].op == "call_module"
            and isinstance(modules[bn_users[0].target], (nn.ReLU, nn.ReLU6))
        ):
            act = bn_users[0].target
        chains.append((node.target, bn.target, act))
    return chains


@torch.no_grad()
def dead_channel_stats(model: nn.Module, images: torch.Tensor | None = None, var_threshold: float = DEAD_VAR) -> dict:
    """Per conv+BN pair: how many output channels are dead and how skewed BN folding makes the weights.

    A channel counts as dead when its BN ``running_var < var_threshold`` (its input never
    varies) or, when ``images`` is given and the BN feeds a ReLU/ReLU6, when its activation is 0
    on every one of those images (eval mode). For the folded weights
    ``W * |gamma| / sqrt(var + eps)`` the dict reports the largest fold factor and the ratio
    between the largest and the smallest nonzero per-output-channel ``max |W_folded|``: a
    per-tensor weight scale must cover the largest channel, so a ratio of 100 leaves the
    smallest channel with about 1 of the 127 int8 steps.

    Returns ``{"layers": [...], "summary": {...}}``; every value is JSON-serialisable.
    """
    modules = dict(model.named_modules())
    chains = _conv_bn_chains(model)

    act_max: dict[str, torch.Tensor] = {}
    hooks = []
    if images is not None:

        def hook(name):
            def record(module, inputs, output):
                m = output.detach().amax(dim=(0, 2, 3))
                act_max[name] = m if name not in act_max else torch.maximum(act_max[name], m)

            return record

        for _, _, act in chains:
            if act is not None:
                hooks.append(modules[act].register_forward_hook(hook(act)))
        was_training = model.training
        model.eval()
        try:
            for i in range(0, len(images), 1000):
                model(images[i : i + 1000])
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()

    layers = []
    for conv_name, bn_name, act_name in chains:
        conv, bn = modules[conv_name], modules[bn_name]
        var = bn.running_var.float()
        fold = bn.weight.detach().float().abs() / torch.sqrt(var + bn.eps)
        w_range = conv.weight.detach().float().abs().amax(dim=(1, 2, 3)) * fold
        dead_var = var < var_threshold
        dead = dead_var.clone()
        dead_act = None
        if act_name is not None and act_name in act_max:
            always_zero = act_max[act_name] <= 0
            dead_act = int(always_zero.sum())
            dead |= always_zero
        nonzero = w_range > 0
        ratio = float(w_range[nonzero].max() / w_range[nonzero].min()) if nonzero.any() else float("nan")
        if conv.groups == conv.in_channels and conv.groups > 1:
            kind = "dw"
        elif conv.kernel_size == (1, 1):
            kind = "pw"
        else:
            kind = "conv"
        widest = int(w_range.argmax())
        layers.append(
            {
                "conv": conv_name,
                "bn": bn_name,
                "activation": type(modules[act_name]).__name__ if act_name else None,
                "kind": kind,
                "channels": int(conv.out_channels),
                "dead": int(dead.sum()),
                "dead_var": int(dead_var.sum()),
                "dead_act": dead_act,
                "max_fold": float(fold.max()),
                "range_ratio": ratio,
                "widest_channel_dead": bool(dead[widest]),
            }
        )

    def worst(kind=None):
        vals = [l["range_ratio"] for l in layers if kind is None or l["kind"] == kind]
        vals = [v for v in vals if not math.isnan(v)]
        return max(vals) if vals else None

    summary = {
        "layers": len(layers),
        "channels": sum(l["channels"] for l in layers),
        "dead": sum(l["dead"] for l in layers),
        "dead_var": sum(l["dead_var"] for l in layers),
        "layers_with_dead": sum(1 for l in layers if l["dead"]),
        "max_fold": max((l["max_fold"] for l in layers), default=None),
        "max_range_ratio": worst(),
        "max_range_ratio_dw": worst("dw"),
        "activation_images": 0 if images is None else len(images),
        "var_threshold": var_threshold,
    }
    return {"layers": layers, "summary": summary}


def format_dead_channel_stats(stats: dict) -> str:
    """A fixed-width table of ``dead_channel_stats`` for logs."""
    lines = [
        f"{'conv':<22} {'kind':<4} {'ch':>4} {'dead':>4} {'var':>4} {'act':>4} {'max_fold':>9} "
        f"{'range_ratio':>11} widest_dead"
    ]
    for l in stats["layers"]:
        act = "-" if l["dead_act"] is None else str(l["dead_act"])
        lines.append(
            f"{l['conv']:<22} {l['kind']:<4} {l['channels']:>4} {l['dead']:>4} {l['dead_var']:>4} {act:>4} "
            f"{l['max_fold']:>9.2f} {l['range_ratio']:>11.2f} {l['widest_channel_dead']}"
        )
    s = stats["summary"]
    lines.append(
        f"dead {s['dead']}/{s['channels']} channels in {s['layers_with_dead']}/{s['layers']} layers "
        f"(running_var < {s['var_threshold']:g}: {s['dead_var']}); max fold {s['max_fold']:.2f}; "
        f"max range ratio {s['max_range_ratio']:.2f} (depthwise {s['max_range_ratio_dw']:.2f})"
    )
    return "\n".join(lines)
