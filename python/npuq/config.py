"""Config files of npuq (TOML): one reader, one way of filling a dataclass from a table, one error.

Every experiment config (``npuq ptq-bench --config``, ``npuq distill``, ``npuq lrf search / iterate``)
is read with :func:`read_toml` and turned into its dataclasses with :func:`fill`, so an unknown key, a
value of the wrong type or out of range is refused in the same words everywhere: a :class:`ConfigError`
whose message names the file and the key (``configs/kd.toml: optim.lr must be a number, got str 'x'``).
"""

from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

__all__ = ["ConfigError", "fill", "read_toml"]


class ConfigError(ValueError):
    """A config file or table is malformed; the message names the file and the key."""


def read_toml(path: str | Path) -> dict:
    """The table of a TOML file; a missing, unreadable or malformed file raises :class:`ConfigError`."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table", list: "a list"}


def _name(t) -> str:
    return _NAMES.get(t, getattr(t, "__name__", str(t)))


def value(v, expected, where: str):
    """``v`` checked against the type annotation ``expected``: bool, int, float (finite; an int is
    accepted), str, dict, ``list`` / ``list[T]``, unions of these, a dataclass (filled from a table), or
    anything else (passed through unchanged)."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(expected) if o is not type(None)]
        for option in options:
            try:
                return value(v, option, where)
            except ConfigError:
                continue
        raise ConfigError(
            f"{where} must be " + " or ".join(_name(o) for o in options) + f", got {type(v).__name__} {v!r:.60}"
        )
    if origin is list or expected is list:
        args = typing.get_args(expected)
        if not isinstance(v, list):
            what = f"a list of {_name(args[0]).split(' ', 1)[-1]}s" if args else "a list"
            raise ConfigError(f"{where} must be {what}, got {type(v).__name__} {v!r:.60}")
        return [value(x, args[0], f"{where}[{i}]") for i, x in enumerate(v)] if args else v
    if origin is dict or expected is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{where} must be a table, got {type(v).__name__} {v!r:.60}")
        return v
    if expected is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    elif expected is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    elif expected in (str, bool):
        if isinstance(v, expected):
            return v
    elif isinstance(expected, type) and is_dataclass(expected):
        return fill(expected, v, where)
    else:
        return v
    raise ConfigError(f"{where} must be {_name(expected)}, got {type(v).__name__} {v!r:.60}")


def fill(cls, table, where: str, *, extra: str | None = None, skip: tuple[str, ...] = ()):
    """An instance of dataclass ``cls`` from a TOML table.

    Unknown keys, wrong types and values that ``cls`` rejects (``ValueError`` / ``TypeError`` from its
    constructor or ``__post_init__``) raise :class:`ConfigError` naming ``where`` and the key. With
    ``extra``, unknown keys are collected into that field (a dict) instead of refused. Keys in ``skip``
    are left to the caller (passed through without a type check)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__} {table!r:.60}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    kwargs, collected = {}, {}
    for key, v in table.items():
        if key not in known or key == extra:
            if extra is not None:
                collected[key] = v
                continue
            raise ConfigError(f"{where}: unknown key '{key}'; known: {', '.join(sorted(known))}")
        kwargs[key] = v if key in skip else value(v, hints[key], f"{where}.{key}")
    if extra is not None:
        kwargs[extra] = collected
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        key = next((k for k in known if message.startswith(f"{k} ")), None) or next(
            (k for k in known if f" {k} " in message), None
        )
        raise ConfigError(f"{where}.{key}: {message}" if key else f"{where}: {message}") from None
