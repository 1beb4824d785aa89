#!/usr/bin/env python3
"""Train the attention recognizer of npuq.asr on the digits corpus and write a shipped checkpoint.

    nice -n 19 python3 scripts/train_asr.py --epochs 30 --threads 1 --seed 0 \
        --out results/asr_digits --checkpoint packages/npuq-checkpoints/npuq_checkpoints/asr_digits.safetensors

writes to ``--out`` the per-epoch state (resumed from when rerun), ``history.json``,
``learning_curve.png`` and ``results.json`` (dev and test WER/CER, greedy and beam); with
``--checkpoint``, the best-on-dev model as float32 safetensors with that metadata, this command line,
the torch version and the seed. docs/asr.md describes the model and the recipe. The shipped checkpoint is
a file of the data package ``packages/npuq-checkpoints`` (``pip install ./packages/npuq-checkpoints`` installs
it, ``NPUQ_CHECKPOINT_DIR`` points npuq at another folder).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from npuq.asr import ASRConfig, evaluate_wer, save_asr_checkpoint
from npuq.asr.train import TrainOptions, train_asr
from npuq.speech import load_digits


def parse_args(argv=None):
    model, opts = ASRConfig(), TrainOptions()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/asr_digits"), help="run directory (state, history, plot)")
    p.add_argument("--checkpoint", type=Path, default=None, help="where to write the final model (none: do not)")
    p.add_argument("--epochs", type=int, default=opts.epochs)
    p.add_argument("--batch-size", type=int, default=opts.batch_size)
    p.add_argument("--lr", type=float, default=opts.lr)
    p.add_argument("--warmup-steps", type=int, default=opts.warmup_steps)
    p.add_argument("--label-smoothing", type=float, default=opts.label_smoothing)
    p.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=opts.spec_augment)
    p.add_argument("--patience", type=int, default=opts.patience)
    p.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that crosses this time")
    p.add_argument(
        "--stop-after-epoch",
        type=int,
        default=None,
        help="end the run after this epoch (the learning-rate schedule still spans --epochs)",
    )
    p.add_argument("--seed", type=int, default=opts.seed)
    p.add_argument("--threads", type=int, default=opts.threads)
    p.add_argument("--encoder-hidden", type=int, default=model.encoder_hidden)
    p.add_argument("--encoder-layers", type=int, default=model.encoder_layers)
    p.add_argument("--decoder-hidden", type=int, default=model.decoder_hidden)
    p.add_argument("--dropout", type=float, default=model.dropout)
    p.add_argument("--beam", type=int, default=4, help="beam size of the final evaluation")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam scores are log-prob / length**this")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a state file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python3 " + shlex.join(sys.argv if argv is None else ["scripts/train_asr.py", *argv])
    config = ASRConfig(
        encoder_hidden=args.encoder_hidden,
        encoder_layers=args.encoder_layers,
        decoder_hidden=args.decoder_hidden,
        dropout=args.dropout,
    )
    options = TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        label_smoothing=args.label_smoothing,
        spec_augment=args.spec_augment,
        patience=args.patience,
        max_minutes=args.max_minutes,
        seed=args.seed,
        threads=args.threads,
    )
    torch.set_num_threads(args.threads)
    splits = {
        name: load_digits(name, normalize=config.normalize, progress=not args.quiet)
        for name in ("train", "dev", "test")
    }
    result = train_asr(
        splits["train"],
        splits["dev"],
        config,
        options,
        out_dir=args.out,
        resume=not args.no_resume,
        progress=not args.quiet,
        stop_after_epoch=args.stop_after_epoch,
    )
    model = result["model"]
    print(
        f"best epoch {result['best_epoch']} of {result['epochs_run']} ({result['stopped']}), dev WER "
        f"{result['best_dev_wer']:.4f}, {result['seconds']:.0f} s",
        flush=True,
    )

    results = {}
    for name in ("dev", "test"):
        for label, beam in (("greedy", 1), (f"beam{args.beam}", args.beam)):
            scores = evaluate_wer(model, splits[name], beam=beam, length_penalty=args.length_penalty)
            results[f"{name}_{label}"] = {k: scores[k] for k in ("wer", "cer", "utterances", "words", "seconds")}
            print(
                f"{name} {label}: WER {scores['wer']:.4f} CER {scores['cer']:.4f} "
                f"({scores['utterances']} utterances, {scores['seconds']:.1f} s)",
                flush=True,
            )
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "results": results,
                "best_epoch": result["best_epoch"],
                "epochs_run": result["epochs_run"],
                "stopped": result["stopped"],
                "train_seconds": result["seconds"],
                "command": command,
                "parameters": model.num_parameters(),
            },
            indent=1,
        )
        + "\n"
    )

    if args.checkpoint is not None:
        corpus = splits["train"].manifest.get("config", {})
        metadata = {
            "model": "asr_attention",
            "task": "digits",
            "parameters": model.num_parameters(),
            "epochs": result["epochs_run"],
            "best_epoch": result["best_epoch"],
            "stopped": result["stopped"],
            "seed": args.seed,
            "threads": args.threads,
            "beam": args.beam,
            "length_penalty": args.length_penalty,
            "results": results,
            "dev_wer_greedy": f"{results['dev_greedy']['wer']:.4f}",
            "test_wer_greedy": f"{results['test_greedy']['wer']:.4f}",
            "test_wer_beam": f"{results[f'test_beam{args.beam}']['wer']:.4f}",
            "train_seconds": f"{result['seconds']:.1f}",
            "train_options": options.to_dict(),
            "corpus": json.dumps(corpus) if corpus else "default DigitsConfig()",
            "command": command,
            "torch_version": torch.__version__,
            "history": result["history"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = save_asr_checkpoint(model, args.checkpoint, metadata)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
