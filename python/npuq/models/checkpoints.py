"""Trained checkpoints: save, find and load them.

The shipped ones are not in npuq's wheel: they come with the optional distribution ``npuq-checkpoints``
(``pip install 'npuq[checkpoints]'``; in a source checkout ``packages/npuq-checkpoints/npuq_checkpoints/``), or
from the folder ``NPUQ_CHECKPOINT_DIR`` names; :func:`npuq._shipped.checkpoint_dir` says which folder is used.

Each file holds a float32 ``state_dict`` (BN running statistics included) and string metadata
(model name, width, recipe, accuracy, the command that produced it, ...). The metadata is
enough to rebuild the architecture, so ``load_checkpoint("mobilenet_v2_w0.5_sgd")`` needs no
other argument.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from npuq._shipped import INSTALL_HINT, checkpoint_dir, describe_dir, listing
from npuq._validate import Options, check
from npuq.models import build_model

SUFFIX = ".safetensors"

# metadata fields converted back from strings by load_checkpoint
_INT_FIELDS = ("epochs", "seed", "threads", "batch_size", "macs")
_FLOAT_FIELDS = ("width", "test_accuracy", "train_seconds")
_JSON_FIELDS = ("dead_channel_stats", "history")


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint of that name or path; the message lists the shipped ones, or, when none are installed,
    says how to install them."""


class CheckpointMismatchError(ValueError):
    """The tensors of a checkpoint do not fit the architecture its metadata names."""


def checkpoint_name(model: str, width: float, recipe: str) -> str:
    """``mobilenet_v2_w0.5_sgd``: the file stem used for a (model, width, recipe) triple."""
    return f"{model}_w{width:g}_{recipe}"


_ASR_FORMAT = "npuq-asr-1"  # npuq.asr.ASR_FORMAT (that module imports this one)

# metadata ``format`` of checkpoints of other model families sharing the directory, with their loaders
_OTHER_FAMILIES = {_ASR_FORMAT: "npuq.asr.load_asr_checkpoint"}


def _format(path: Path) -> str | None:
    """The metadata ``format`` of a safetensors file (None: not given, or the file is unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except Exception:  # an unreadable file is listed, and load_checkpoint reports it
        return None


def _other_family(path: Path) -> str | None:
    """The loader to use for ``path`` when it is a checkpoint of another model family, else None."""
    return _OTHER_FAMILIES.get(_format(path))


def list_checkpoints(directory=None) -> list[str]:
    """Names (file stems) of the image-model checkpoints in ``directory`` (default: the shipped ones, [] when
    none are installed); checkpoints of other model families (the speech recognizer of ``npuq.asr``) are left
    out."""
    directory = Path(directory) if directory is not None else checkpoint_dir()
    if directory is None or not directory.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in directory.glob(f"*{SUFFIX}") if _other_family(p) is None)


def save_checkpoint(model: torch.nn.Module, path, metadata: dict) -> Path:
    """Write ``model.state_dict()`` (floats as float32) and ``metadata`` (values stringified;
    dicts and lists as JSON) to ``path``. ``metadata`` must name ``model`` and ``width``."""
    from safetensors.torch import save_file

    for key in ("model", "width"):
        if key not in metadata:
            raise ValueError(f"checkpoint metadata needs {key!r}")
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        tensors[name] = (t.float() if t.is_floating_point() else t).contiguous().clone()
    meta = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in metadata.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    path.chmod(0o644)  # the writer creates 0600; a shipped file must be readable by everyone
    return path


CHECKPOINT_KINDS = ("image", "asr")


def resolve_checkpoint(name_or_path, kind: str = "image") -> Path:
    """The file of a checkpoint: ``name_or_path`` itself when it is a file, else the shipped checkpoint of that
    name (``.safetensors`` optional) in the folder of :func:`npuq._shipped.checkpoint_dir`.

    ``kind`` (``"image"``: :func:`load_checkpoint`'s image classifiers, ``"asr"``: the speech recognizers of
    :mod:`npuq.asr`) only chooses what :class:`CheckpointNotFoundError` lists: the shipped checkpoints of
    that kind, or (``"asr"``) every file of the directory; when there is no checkpoint of that kind (the data
    package is not installed), the message says how to install them.
    """
    check(kind, "kind", Options(CHECKPOINT_KINDS))
    path = Path(name_or_path)
    if path.is_file():
        return path
    directory = checkpoint_dir()
    what = "ASR checkpoint" if kind == "asr" else "checkpoint"
    if directory is None:
        raise CheckpointNotFoundError(
            f"no {what} {str(name_or_path)!r}: not a file, and no shipped checkpoints are installed; {INSTALL_HINT}"
        )
    candidate = directory / (str(name_or_path).removesuffix(SUFFIX) + SUFFIX)
    if candidate.is_file():
        return candidate
    files = sorted(directory.glob(f"*{SUFFIX}"))
    if kind == "asr":
        # every file is listed (a factorized recognizer is one too); the install hint when none is an ASR one
        if any(_format(p) == _ASR_FORMAT for p in files):
            there = "files there: " + ", ".join(p.name[: -len(SUFFIX)] for p in files)
        else:
            there = f"no ASR checkpoint there; {INSTALL_HINT}"
        raise CheckpointNotFoundError(
            f"no ASR checkpoint {str(name_or_path)!r}: not a file, and not in {describe_dir(directory)} ({there})"
        )
    raise CheckpointNotFoundError(
        f"no checkpoint {str(name_or_path)!r}: not a file, and not among the shipped checkpoints "
        f"in {describe_dir(directory)} (available: {listing(list_checkpoints(directory))})"
    )


def _parse_metadata(raw: dict) -> dict:
    meta = dict(raw)
    for key in _INT_FIELDS:
        if key in meta:
            meta[key] = int(meta[key])
    for key in _FLOAT_FIELDS:
        if key in meta:
            meta[key] = float(meta[key])
    for key in _JSON_FIELDS:
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


def _read(path: Path, with_tensors: bool):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else None  # noqa: SIM118
    except Exception as exc:  # the reader raises its own error types for bad headers
        hint = "; it is an NPU program: run it with `npuq run`" if _looks_like_program(path) else ""
        raise CheckpointMismatchError(
            f"{path}: not a checkpoint, not a readable safetensors file ({exc}){hint}; "
            "expected a shipped checkpoint name or a .safetensors checkpoint"
        ) from exc
    return raw, tensors


def _looks_like_program(path: Path) -> bool:
    """Whether ``path`` is an NPU program file (its JSON graph names the program format), a common mix-up."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'"npuq-program' in head or path.suffix == ".npuq"


def read_metadata(name_or_path) -> dict:
    """The parsed metadata of a checkpoint, without loading its tensors."""
    raw, _ = _read(resolve_checkpoint(name_or_path), with_tensors=False)
    return _parse_metadata(raw)


def load_checkpoint(name_or_path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model named in the checkpoint's metadata, load its weights, return
    ``(model in eval mode, metadata)``.

    ``name_or_path`` is a shipped name (see ``list_checkpoints()``, ``.safetensors`` optional) or
    a file path. Numeric metadata comes back as numbers and the JSON fields as dicts/lists.
    """
    path = resolve_checkpoint(name_or_path)
    loader = _other_family(path)
    if loader is not None:
        raise CheckpointMismatchError(f"{path} is not an image-model checkpoint: load it with {loader}")
    raw, tensors = _read(path, with_tensors=True)
    missing_meta = [k for k in ("model", "width") if k not in raw]
    if missing_meta and _looks_like_program(path):
        raise CheckpointMismatchError(
            f"{path} is an NPU program, not a checkpoint: run it with `npuq run`, or give "
            "a shipped checkpoint name or a .safetensors checkpoint"
        )
    if missing_meta:
        raise CheckpointMismatchError(f"{path}: metadata lacks {', '.join(missing_meta)}; cannot rebuild the model")
    meta = _parse_metadata(raw)
    model = build_model(meta["model"], width=meta["width"])
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        f"{k}: file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)}"
        for k in set(expected) & set(tensors)
        if tensors[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            details.append(f"wrong shape {len(wrong_shape)} (e.g. {'; '.join(wrong_shape[:3])})")
        raise CheckpointMismatchError(
            f"{path}: tensors do not match {meta['model']} width {meta['width']:g}: " + "; ".join(details)
        )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model, meta
