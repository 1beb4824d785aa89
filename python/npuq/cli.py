"""The ``npuq`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="npuq", description="Integer NPU toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the integer kernels on a small network and compare with float")
    demo.add_argument("--out", default="results/demo", help="folder for the JSON report and the plot")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch", type=int, default=8)
    sub.add_parser("info", help="print the build, the arithmetic version and the CPU kernels in use")
    args = parser.parse_args(argv)
    if args.command == "info":
        import npuq

        print(f"npuq {npuq.__version__}, arithmetic version {npuq.ARITHMETIC_VERSION}, "
              f"CUDA build: {npuq.BUILT_WITH_CUDA}")
        print(f"CPU kernels: {npuq.cpu_features()}, threads: {npuq.get_num_threads()}")
        return 0
    from npuq.demo import run_demo

    return run_demo(out_dir=args.out, seed=args.seed, batch=args.batch)


if __name__ == "__main__":
    sys.exit(main())
