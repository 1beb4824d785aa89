#!/usr/bin/env python3
"""Train a MobileNet on Fashion-MNIST and write a checkpoint for the PTQ benchmark.

    python scripts/train_fmnist.py --model mobilenet_v2 --width 0.5 --recipe sgd --epochs 5 \
        --seed 0 --out packages/npuq-checkpoints/npuq_checkpoints/

writes ``<out>/<model>_w<width>_<recipe>.safetensors``: the float32 state_dict plus metadata
(accuracy, this command line, torch version, threads, dead-channel statistics as JSON).
The run is deterministic for a given seed and thread count.

The shipped checkpoints live in the data package ``packages/npuq-checkpoints`` (the distribution
``npuq-checkpoints``, installed by ``pip install 'npuq[checkpoints]'``); npuq finds a file written there once
that package is reinstalled (``pip install ./packages/npuq-checkpoints``), or at once with
``NPUQ_CHECKPOINT_DIR=packages/npuq-checkpoints/npuq_checkpoints``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from npuq.apps.training import (
    DEFAULT_THREADS,
    RECIPES,
    dead_channel_stats,
    deterministic,
    evaluate,
    format_dead_channel_stats,
    seed_everything,
    train,
)
from npuq.data import fashion_mnist_loader, fashion_mnist_tensors
from npuq.models import MODELS, build_model, count_macs
from npuq.models.checkpoints import checkpoint_name, save_checkpoint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), required=True)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--recipe", choices=RECIPES, required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random 2-px crop + horizontal flip (default: off; it slows convergence in 5 epochs)",
    )
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only (smoke tests)")
    p.add_argument(
        "--stats-images", type=int, default=2048, help="training images used to find always-zero activations"
    )
    p.add_argument("--out", type=Path, default=None, help="directory for the checkpoint (none: do not save)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python " + shlex.join(sys.argv if argv is None else ["scripts/train_fmnist.py", *argv])
    seed_everything(args.seed)
    model = build_model(args.model, width=args.width)
    macs = count_macs(model)
    print(
        f"{args.model} width {args.width:g}: {macs / 1e6:.2f} M MACs/image, "
        f"{sum(p.numel() for p in model.parameters())} parameters",
        flush=True,
    )

    test_loader = fashion_mnist_loader("test", batch_size=1000)
    result = train(
        model,
        args.recipe,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        augmentation=args.augment,
        threads=args.threads,
        eval_loader=test_loader,
        progress=not args.quiet,
    )
    with deterministic(args.threads):
        accuracy = evaluate(model, test_loader)
        calib = fashion_mnist_tensors("train")[0][: args.stats_images]
        stats = dead_channel_stats(model, calib)
    print(format_dead_channel_stats(stats))
    print(f"test accuracy {accuracy:.4f}; trained in {result['seconds']:.0f} s", flush=True)

    if args.out is not None:
        metadata = {
            "format": "npuq-checkpoint-1",
            "model": args.model,
            "width": f"{args.width:g}",
            "recipe": args.recipe,
            "epochs": args.epochs,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "augmentation": args.augment,
            "limit": args.limit,
            "test_accuracy": f"{accuracy:.4f}",
            "train_seconds": f"{result['seconds']:.1f}",
            "macs": macs,
            "command": command,
            "torch_version": torch.__version__,
            "threads": args.threads,
            "history": result["history"],
            "dead_channel_stats": stats,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = save_checkpoint(
            model, args.out / f"{checkpoint_name(args.model, args.width, args.recipe)}.safetensors", metadata
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
