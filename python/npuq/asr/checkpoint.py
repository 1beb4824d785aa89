"""Saving and loading :class:`~npuq.asr.model.AttentionASR` checkpoints (safetensors + metadata).

A file holds the float32 ``state_dict`` and string metadata; ``format`` is :data:`ASR_FORMAT` and
``config`` the JSON of the :class:`~npuq.asr.model.ASRConfig`, enough to rebuild the model. Other fields
(error rates, command, history, ...) are kept as given, dicts and lists as JSON.

The shipped recognizer ``asr_digits`` comes with the optional distribution ``npuq-checkpoints``
(``pip install 'npuq[checkpoints]'``), like the image checkpoints of :mod:`npuq.models.checkpoints`.
"""

from __future__ import annotations

import json
from pathlib import Path

from npuq.asr.model import ASRConfig, AttentionASR
from npuq.models.checkpoints import SUFFIX, resolve_checkpoint  # noqa: F401 (SUFFIX: a name of this module too)

ASR_FORMAT = "npuq-asr-1"

# metadata fields turned back from strings into numbers or JSON by load_asr_checkpoint
_INT_FIELDS = ("epochs", "seed", "threads", "parameters", "best_epoch", "beam")
_FLOAT_FIELDS = ("train_seconds", "length_penalty")
_JSON_FIELDS = ("config", "history", "results", "train_options")


class ASRCheckpointError(ValueError):
    """A file is not an ASR checkpoint, or its tensors do not fit the configuration it names."""


def save_asr_checkpoint(model: AttentionASR, path, metadata: dict | None = None) -> Path:
    """Write ``model``'s float32 state and ``metadata`` (plus ``format`` and ``config``) to ``path``."""
    from safetensors.torch import save_file

    if not isinstance(model, AttentionASR):
        raise TypeError(f"model must be an AttentionASR, got {type(model).__name__}")
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        tensors[name] = (tensor.float() if tensor.is_floating_point() else tensor).contiguous().clone()
    meta = dict(metadata or {})
    meta["format"] = ASR_FORMAT
    meta["config"] = model.config.to_dict()
    strings = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in meta.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=strings)
    tmp.replace(path)
    path.chmod(0o644)  # the writer creates 0600; a shipped file must be readable by everyone
    return path


def parse_asr_metadata(raw: dict) -> dict:
    """The metadata strings of an ASR checkpoint file with numbers as numbers and ``config``, ``history``,
    ``results`` as dicts/lists (what :func:`load_asr_checkpoint` returns beside the model)."""
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


def is_asr_checkpoint(path) -> bool:
    """Whether ``path`` is a readable safetensors file whose metadata says it is an ASR checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == ASR_FORMAT
    except Exception:  # unreadable files are simply not ASR checkpoints
        return False


def load_asr_checkpoint(name_or_path="asr_digits") -> tuple[AttentionASR, dict]:
    """``(model in eval mode, metadata)`` from a file path or the name of a shipped checkpoint
    (default: ``asr_digits``); numeric metadata comes back as numbers, ``config``, ``history`` and
    ``results`` as dicts/lists."""
    from safetensors import safe_open

    path = resolve_checkpoint(name_or_path, kind="asr")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # the reader raises its own error types for bad headers
        raise ASRCheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw.get("format") != ASR_FORMAT:
        raise ASRCheckpointError(
            f"{path}: metadata format is {raw.get('format')!r}, not {ASR_FORMAT!r}: not an ASR checkpoint"
        )
    meta = parse_asr_metadata(raw)
    try:
        config = ASRConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ASRCheckpointError(f"{path}: cannot rebuild the model from its config metadata ({exc})") from exc
    model = AttentionASR(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k}: file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)}"
        for k in set(expected) & set(tensors)
        if tensors[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        details = [
            f"{label} {len(items)} (e.g. {', '.join(items[:3])})"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if items
        ]
        raise ASRCheckpointError(f"{path}: tensors do not match its config: " + "; ".join(details))
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model, meta
