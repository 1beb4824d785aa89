#!/usr/bin/env python3
"""Build (or load from the cache) the espeak-ng connected-digits corpus and summarize it.

Prints the utterance, word and speaker counts per split, the time taken, and duration statistics;
writes ``summary.json`` and ``digits.png`` (the log-mel spectrogram of one training utterance and the
duration histograms of the splits) to ``--out``. docs/speech.md describes the corpus.

Examples:
    python3 scripts/make_digits.py
    python3 scripts/make_digits.py --train 500 --dev 50 --test 50 --out results/digits_small
    NPUQ_DATA_DIR=/data python3 scripts/make_digits.py --rebuild
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from npuq import speech


def parse_args(argv=None):
    defaults = speech.DigitsConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/digits"), help="where the summary and figure go")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="parent of the corpus directory (default: $NPUQ_DATA_DIR/digits or ~/.cache/npuq/digits)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--train", type=int, default=defaults.train_size, help="training utterances")
    p.add_argument("--dev", type=int, default=defaults.dev_size, help="development utterances")
    p.add_argument("--test", type=int, default=defaults.test_size, help="test utterances")
    p.add_argument("--workers", type=int, default=None, help="synthesis threads (default: all CPUs)")
    p.add_argument("--rebuild", action="store_true", help="synthesize again even if the corpus is cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def describe(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return (
        f"mean {v.mean():.2f}  min {v.min():.2f}  median {np.median(v):.2f}  "
        f"p95 {np.percentile(v, 95):.2f}  max {v.max():.2f}"
    )


def plot(splits, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = splits["train"]
    fig, (ax_spec, ax_hist) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
    feats = train.features[0]
    image = ax_spec.imshow(
        feats.T, origin="lower", aspect="auto", cmap="magma", extent=(0, len(feats) * 0.01, 0, feats.shape[1])
    )
    info = train.utterances[0]
    ax_spec.set_title(
        f'"{" ".join(train.transcripts[0])}"  ({info["speaker"]}, {info["noise"]} noise, SNR {info["snr_db"]:.1f} dB)',
        fontsize=9,
    )
    ax_spec.set_xlabel("time (s)")
    ax_spec.set_ylabel("mel band")
    fig.colorbar(image, ax=ax_spec, label="log energy")
    bins = np.linspace(0, max(max(u["seconds"] for u in s.utterances) for s in splits.values()), 40)
    for name, data in splits.items():
        ax_hist.hist([u["seconds"] for u in data.utterances], bins=bins, density=True, histtype="step", label=name)
    ax_hist.set_xlabel("duration (s)")
    ax_hist.set_ylabel("density")
    ax_hist.set_title("utterance durations", fontsize=9)
    ax_hist.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = speech.DigitsConfig(seed=args.seed, train_size=args.train, dev_size=args.dev, test_size=args.test)
    started = time.perf_counter()
    directory = speech.build_digits(
        config, args.cache_dir, workers=args.workers, progress=not args.no_progress, rebuild=args.rebuild
    )
    ready = time.perf_counter() - started
    splits = {
        name: speech.load_digits(name, config, args.cache_dir, build=False, verify=False) for name in speech.SPLITS
    }
    manifest = splits["train"].manifest
    print(f"corpus: {directory}")
    print(f"espeak-ng: {manifest['espeak_ng'].splitlines()[0]}")
    print(
        f"{len(manifest['voices'])} voices x {len(manifest['variants'])} variants = "
        f"{len(manifest['voices']) * len(manifest['variants'])} speakers"
    )
    print(
        f"ready in {ready:.1f} s (synthesis took {manifest['build_seconds']:.1f} s with "
        f"{manifest['workers']} workers when the corpus was built)"
    )
    print(f"{'split':<6} {'utts':>6} {'words':>7} {'speakers':>9} {'used':>6} {'hours':>7}")
    for name in speech.SPLITS:
        c = manifest["counts"][name]
        print(
            f"{name:<6} {c['utterances']:>6} {c['words']:>7} {c['speakers']:>9} {c['speakers_used']:>6} "
            f"{c['seconds'] / 3600:>7.3f}"
        )
    for name, data in splits.items():
        print(f"{name:<6} seconds: {describe([u['seconds'] for u in data.utterances])}")
        print(f"{'':<6} words:   {describe([len(t) for t in data.transcripts])}")
    words = [w for t in splits["train"].transcripts for w in t]
    print("train word counts: " + ", ".join(f"{w} {words.count(w)}" for w in speech.WORDS))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        k: manifest[k]
        for k in ("config", "config_hash", "espeak_ng", "speakers", "counts", "durations", "build_seconds", "workers")
    }
    summary["directory"] = str(directory)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(splits, args.out / "digits.png")
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'digits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
