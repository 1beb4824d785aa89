"""Where the trained checkpoints are. They are not in npuq's wheel: the optional distribution
``npuq-checkpoints`` (import package ``npuq_checkpoints``, installed by the extra ``npuq[checkpoints]``) holds
them, and the environment variable ``NPUQ_CHECKPOINT_DIR`` can name another folder instead.

This module imports neither torch nor the data package (only its location is looked up), so that the command
line can list the checkpoints in its help texts cheaply.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ENV_VAR = "NPUQ_CHECKPOINT_DIR"
DATA_PACKAGE = "npuq_checkpoints"  # the import package of the distribution npuq-checkpoints

INSTALL_HINT = (
    "the checkpoints are in the optional package npuq-checkpoints: pip install 'npuq[checkpoints]' "
    "(from a source checkout: pip install ./packages/npuq-checkpoints)"
)


def checkpoint_dir() -> Path | None:
    """The folder of the shipped checkpoints: ``$NPUQ_CHECKPOINT_DIR`` when set (it must be a directory), else
    the installed ``npuq_checkpoints`` package's folder, else None (not installed)."""
    override = os.environ.get(ENV_VAR)
    if override:  # an empty value counts as unset, as for NPUQ_FASHION_MNIST
        path = Path(override)
        if not path.is_dir():
            raise ValueError(
                f"{ENV_VAR}={override}: not a directory; point it at a folder of .safetensors checkpoints, or "
                "unset it to use the installed npuq-checkpoints package"
            )
        return path
    try:
        spec = importlib.util.find_spec(DATA_PACKAGE)
    except (ImportError, ValueError):  # a broken entry in sys.modules or on the path: treat as not installed
        return None
    # only a regular package counts: a stray folder of that name (the working directory, leftovers of an
    # uninstall) would be found as a namespace package, with no origin file
    if spec is None or not spec.origin or Path(spec.origin).name != "__init__.py":
        return None
    return Path(spec.origin).resolve().parent


def describe_dir(directory: Path) -> str:
    """How ``directory`` was chosen, for messages: ``NPUQ_CHECKPOINT_DIR=...`` when the variable named it."""
    override = os.environ.get(ENV_VAR)
    return f"{ENV_VAR}={override}" if override and Path(override) == directory else str(directory)


def listing(names) -> str:
    """``names`` joined by commas, or, when there are none, that none are installed and how to get them."""
    names = list(names)
    return ", ".join(names) if names else f"none installed; {INSTALL_HINT}"
