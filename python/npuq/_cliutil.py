"""What every ``npuq`` sub-command shares: the parser class, argument types that state their ranges, the
options of several commands (``add_quantization_options``), and the rule that turns a user's mistake into
one line on stderr and exit code 2. The subsystems' command modules import these from here, never from
:mod:`npuq.cli`, which only assembles them.

The rule: a command reports a mistake by raising :class:`CommandError` (or any of npuq's own input errors,
which are ``ValueError``/``OSError`` subclasses); :func:`run_command` prints ``npuq CMD: message`` and
returns 2. A traceback means a bug in npuq; ``NPUQ_DEBUG=1`` shows the traceback of a user error too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from pathlib import Path

EXIT_USAGE = 2  # bad input: arguments, files, configs
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class CommandError(Exception):
    """A user's mistake found by a command: printed as one line, exit code 2."""


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a meaningful default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" in text
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``npuq CMD: ...``) and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def int_range(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (hi None: no upper bound); the range shows in the error."""
    shown = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {shown}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected an integer {shown}")
        return value

    parse.__name__ = f"integer {shown}"
    return parse


def float_range(lo: float, hi: float | None = None, *, lo_open: bool = False):
    """An argparse type: a finite float in [lo, hi] ((lo, hi] with lo_open)."""
    shown = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi is not None else f"{'>' if lo_open else '>='} {lo:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {shown}, got {text!r}") from None
        below = value <= lo if lo_open else value < lo
        if value != value or below or (hi is not None and value > hi) or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected a number {shown}")
        return value

    parse.__name__ = f"number {shown}"
    return parse


def threads_arg(text: str) -> int:
    """``--threads``: 1..npuq.MAX_THREADS (beyond it OpenMP aborts the process instead of raising)."""
    from npuq.runtime import MAX_THREADS

    return int_range(1, MAX_THREADS)(text)


threads_arg.__name__ = "thread count"


@contextlib.contextmanager
def removes_if_empty(folder):
    """Remove ``folder`` again when the block fails and the folder is new and still empty: a command that
    fails before its first result leaves nothing behind."""
    path = Path(folder)
    existed = path.exists()
    try:
        yield path
    except BaseException:
        if not existed and path.is_dir() and not path.is_symlink():
            try:
                path.rmdir()  # only succeeds when empty
            except OSError:
                pass
        raise


def shipped_checkpoints_help() -> str:
    """The ``--model`` help: the shipped image checkpoints by name, read without importing torch; when none
    are installed, it says so and how to install them."""
    from npuq._shipped import listing

    try:
        names = shipped_image_checkpoints()
    except ValueError as exc:  # a wrong NPUQ_CHECKPOINT_DIR: the help still shows; running the command reports it
        return (
            f"a shipped checkpoint (none found: {exc}) or a .safetensors checkpoint written by scripts/train_fmnist.py"
        )
    return f"a shipped checkpoint ({listing(names)}) or a .safetensors checkpoint written by scripts/train_fmnist.py"


def add_quantization_options(p, *, weight_only: bool) -> None:
    """The options `npuq quantize` and `npuq compile` share."""
    from npuq.methods import ACTIVATION_METHODS, ROUNDINGS, WEIGHT_METHODS

    p.add_argument("--weights", default="wess", choices=WEIGHT_METHODS, help="weight quantization method")
    p.add_argument("--bits", type=int_range(2, 8), default=8, metavar="{2..8}", help="weight bits")
    acts = [*ACTIVATION_METHODS, "none"] if weight_only else list(ACTIVATION_METHODS)
    p.add_argument(
        "--activations",
        default="mse",
        choices=acts,
        help="activation observer for int8 activations"
        + (", or 'none' for weight-only quantization" if weight_only else ""),
    )
    p.add_argument("--calib-batches", type=int_range(1, 100_000), default=8, help="calibration batches")
    p.add_argument("--batch-size", type=int_range(1, 65_536), default=256, help="calibration batch size")
    p.add_argument("--cle", action="store_true", help="cross-layer equalization (+ high-bias absorption)")
    p.add_argument("--bias-correction", action="store_true", help="correct the mean output error of each layer")
    p.add_argument("--rounding", default="double", choices=ROUNDINGS, help="requantization rounding")


def shipped_image_checkpoints() -> list[str]:
    """Names of the shipped image-classifier checkpoints, from the files' headers (torch is not imported); []
    when none are installed."""
    # other model families (the speech recognizer, format "npuq-asr-1") share the folder
    return [name for name, meta in _shipped().items() if meta.get("format", "npuq-checkpoint-1") == "npuq-checkpoint-1"]


def shipped_metadata(name: str) -> dict:
    return _shipped().get(name, {})


def _shipped() -> dict[str, dict]:
    from npuq._shipped import checkpoint_dir

    folder = checkpoint_dir()
    return _headers(folder) if folder is not None else {}


@functools.lru_cache(maxsize=4)  # per folder: NPUQ_CHECKPOINT_DIR may change between calls (tests)
def _headers(folder: Path) -> dict[str, dict]:
    return {p.name[: -len(".safetensors")]: _safetensors_metadata(p) for p in sorted(folder.glob("*.safetensors"))}


def _safetensors_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a safetensors file: 8-byte little-endian header length, then JSON."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= (1 << 24):
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def _is_user_error(exc: BaseException) -> bool:
    # ValueError / OSError / ImportError cover npuq's input errors (ProgramError, ConfigError, VectorsError,
    # CheckpointNotFoundError, MissingWeightsError, ...); npuq's own RuntimeError subclasses (TraceError,
    # EspeakError, StorageError, ...) describe the user's environment or model, not a bug in npuq
    if isinstance(exc, (CommandError, ValueError, OSError, ImportError, MemoryError)):
        return True
    return type(exc).__module__.split(".")[0] == "npuq"


def run_command(prog: str, func, args) -> int:
    """Run one command; a user error becomes ``prog: message`` on stderr and exit code 2."""
    try:
        code = func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # some helpers still exit with a message; keep the prefix and the code 2
        if exc.code is None or isinstance(exc.code, int):
            raise
        print(_prefixed(prog, str(exc.code)), file=sys.stderr)
        return EXIT_USAGE
    except BaseException as exc:
        if os.environ.get("NPUQ_DEBUG") == "1" or not _is_user_error(exc):
            raise
        message = one_line(exc)
        if isinstance(exc, MemoryError):
            message = f"out of memory ({message})"
        print(_prefixed(prog, message), file=sys.stderr)
        return EXIT_USAGE
    return 0 if code is None else int(code)


def _prefixed(prog: str, message: str) -> str:
    message = " ".join(message.split())
    return message if message.startswith("npuq ") else f"{prog}: {message}"


__all__ = [
    "CommandError",
    "EXIT_USAGE",
    "HelpFormatter",
    "Parser",
    "add_quantization_options",
    "float_range",
    "int_range",
    "one_line",
    "run_command",
    "shipped_checkpoints_help",
    "threads_arg",
]
