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
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path

__all__ = ["ConfigError", "check_fields", "checked", "fill", "read_toml", "require"]


class ConfigError(ValueError):
    """A config file or table is malformed; the message names the file and the key."""


def checked(default=MISSING, constraint=None, *, default_factory=MISSING):
    """A dataclass field held to ``constraint`` (an ``Interval`` or ``Options`` of :mod:`npuq._validate`) by
    :func:`check_fields`: the range or the choices of a setting are declared where the setting is, in the
    vocabulary every argument of npuq is checked with::

        budget: int = checked(100, Interval(int, 1, None))
    """
    return field(default=default, default_factory=default_factory, metadata={"constraint": constraint})


def check_fields(obj) -> None:
    """Check every field of dataclass instance ``obj`` declared with :func:`checked`; a value outside its
    constraint raises ``ValueError`` naming the field (``budget must be >= 1, got 0``), which :func:`fill`
    turns into a :class:`ConfigError` naming the table and the key. Call it from ``__post_init__``, so
    that building the dataclass in code is held to the same constraints as reading it from a file."""
    for f in fields(obj):
        constraint = f.metadata.get("constraint")
        if constraint is not None:
            constraint.check(getattr(obj, f.name), f.name)


def require(v, where: str, constraint):
    """``v`` checked by ``constraint``; a value outside it raises :class:`ConfigError` naming ``where``."""
    try:
        return constraint.check(v, where)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


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
    args = typing.get_args(t)
    if typing.get_origin(t) is list and args:
        return f"a list of {_name(args[0]).split(' ', 1)[-1]}s"  # "a list of integers"
    return _NAMES.get(t, getattr(t, "__name__", str(t)))


def value(v, expected, where: str):
    """``v`` checked against the type annotation ``expected``: bool, int, float (finite; an int is
    accepted), str, dict, ``list`` / ``list[T]``, unions of these, a dataclass (filled from a table), or
    anything else (passed through unchanged)."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(expected) if o is not type(None)]
        if len(options) == 1:  # an optional value (TOML has no null): the one type's own, precise message
            return value(v, options[0], where)
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
            what = _name(expected) if args else "a list"
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
