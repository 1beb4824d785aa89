"""The ``npuq`` command line: the parsers of the sub-commands, assembled from the modules that own them.

Each module in :data:`COMMANDS` exposes ``add_commands(subparsers)``, which adds its sub-commands. Such a
module imports nothing heavy at module level: a command imports what it needs when it runs, so that the
parser builds on a machine without torch. Adding a sub-command: its ``add_commands`` in its subsystem's
``commands`` module, and one line here. No module of the package imports this one; the shared helpers are in
:mod:`npuq._cliutil`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from npuq._cliutil import Parser, run_command

# sub-command -> the module whose add_commands registers it (the order of `npuq --help`)
COMMANDS: dict[str, str] = {
    "quantize": "npuq.quant.commands",
    "ptq-bench": "npuq.apps.commands",
    "demo": "npuq.apps.commands",
    "compile": "npuq.npu.commands",
    "run": "npuq.npu.commands",
    "export-vectors": "npuq.npu.vectors.commands",
    "verify": "npuq.npu.vectors.commands",
    "cost": "npuq.npu.cost",
    "import-tflite": "npuq.interop.commands",
    "export-onnx": "npuq.interop.onnx_commands",
    "distill": "npuq.distill.commands",
    "lrf": "npuq.lrf.commands",
    "config": "npuq.capi",
    "selftest": "npuq.selftest",
}
# what needs no module of COMMANDS: the command defined here, and the top-level option
_BUILT_IN = ("info", "--version")


def build_parser(command: str | None = None) -> Parser:
    """The ``npuq`` parser with every sub-command, or, given ``command``, with that one's module only.

    Importing a subsystem package can be slow (npuq.quant, npuq.distill and npuq.lrf import torch), so
    :func:`main` imports only the module of the command it runs; an unknown command, or none, registers
    every module (for the full help and the list of choices)."""
    parser = Parser(
        prog="npuq",
        description="Integer NPU toolkit: quantize (WESS), compile, emulate bit-exactly, "
        "export golden vectors, distill, factorize. `npuq CMD --help` describes each command.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print npuq's version and arithmetic version")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser(
        "info",
        help="print the build, the arithmetic version, the CPU kernels in use and whether a CUDA device is usable",
    )
    info.set_defaults(func=_run_info)
    if command in COMMANDS:
        modules = [COMMANDS[command]]
    elif command in _BUILT_IN:
        modules = []
    else:
        modules = list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        _add_commands(sub, name)
    return parser


def main(argv=None) -> int:
    """The ``npuq`` entry point: exit 0 on success, 2 on a user's mistake (one line on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # the top-level parser takes no option with a value: the first word is the command
    words = [a for a in argv if not a.startswith("-")]
    args = build_parser(words[0] if words else "--version" if "--version" in argv else None).parse_args(argv)
    prog = " ".join(["npuq", args.command, *([args.lrf_command] if getattr(args, "lrf_command", None) else [])])
    return run_command(prog, args.func, args)


def _add_commands(sub, module_name: str) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] == "npuq":
            raise
        # a missing optional dependency (torch) disables this module's commands only: they stay listed and
        # say why when run, as one line and exit code 2
        for command in [c for c, m in COMMANDS.items() if m == module_name]:
            # no option prefix: every argument, --help included, is taken as a word and ignored
            p = sub.add_parser(command, help=f"unavailable: {exc}", add_help=False, prefix_chars="\0")
            p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
            p.set_defaults(func=_unavailable(exc))
        return
    module.add_commands(sub)


def _unavailable(exc: ImportError):
    def run(args):
        raise exc

    return run


class _VersionAction(argparse.Action):
    """``--version``: imports npuq only when asked (the version lives in the package)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import npuq

        print(f"npuq {npuq.__version__} (arithmetic version {npuq.ARITHMETIC_VERSION})")
        parser.exit(0)


def _run_info(args) -> int:
    import npuq
    from npuq import _cuda

    print(f"npuq {npuq.__version__}, arithmetic version {npuq.ARITHMETIC_VERSION}")
    print("\n".join(_cuda.status_lines(_cuda.info())))
    features = npuq.cpu_features()
    print(
        f"CPU kernels: {features['active']} (supported: {', '.join(features['supported'])}; OpenMP "
        f"{'on' if features['openmp'] else 'off'}), threads: {npuq.get_num_threads()} "
        f"(at most {npuq.MAX_THREADS})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
