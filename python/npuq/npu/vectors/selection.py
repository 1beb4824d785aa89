"""What a golden vector set holds: which file formats, which op folders, whether the layers' accumulators
are written (``npuq export-vectors --formats / --ops / --accumulators``), and how a selection is
recorded in the manifest (docs/golden_vectors.md 7).

A complete set (every op, every format, no accumulators) is what export writes by default; it is a
format-2 set, byte for byte what npuq wrote before selections existed. Any other selection makes a
format-3 set whose manifest records it, so that the check knows what the set must hold.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from npuq.npu.optable import OP_TABLE
from npuq.npu.vectors.formats import ACCUMULATOR_KINDS, FILE_FORMATS, VectorsError

_INDEX = re.compile(r"-?[0-9]+")
_RANGE = re.compile(r"(-?[0-9]*):(-?[0-9]*)")


@dataclass(frozen=True)
class Selection:
    """The part of a program's vectors a set holds. ``ops``: op indices in ascending order; ``request``:
    the ``--ops`` text it was resolved from (None: every op), kept in the manifest for people."""

    formats: tuple[str, ...]
    ops: tuple[int, ...]
    accumulators: bool
    request: str | None

    def is_complete(self, n_ops: int) -> bool:
        """Every op in every format and no accumulators: the default, a format-2 set."""
        return self.formats == FILE_FORMATS and self.ops == tuple(range(n_ops)) and not self.accumulators

    def to_manifest(self) -> dict:
        return {
            "formats": list(self.formats),
            "ops": list(self.ops),
            "accumulators": self.accumulators,
            "ops_request": self.request,
        }


def complete_selection(n_ops: int) -> Selection:
    """The selection of a format-2 set (which records none): everything, no accumulators."""
    return Selection(FILE_FORMATS, tuple(range(n_ops)), False, None)


# ------------------------------------------------------------------------------ formats
def parse_formats(formats: Any) -> tuple[str, ...]:
    """``formats`` (``"hex,bin"``, a sequence of names, or None for all) as a tuple in the order of
    ``FILE_FORMATS``. Raises :class:`VectorsError` naming the unknown ones."""
    if formats is None:
        return FILE_FORMATS
    items = _items(formats, "formats")
    if any(not isinstance(item, str) for item in items):
        raise VectorsError(f"formats {formats!r}: give format names ({', '.join(FILE_FORMATS)})")
    names = [item.strip().lower() for item in items]
    unknown = [name for name in names if name and name not in FILE_FORMATS]
    if unknown or not names or "" in names:
        what = f"unknown format(s) {', '.join(map(repr, unknown))}" if unknown else "an empty format name"
        raise VectorsError(f"formats {_text(formats)!r}: {what}; choose among {', '.join(FILE_FORMATS)}")
    return tuple(f for f in FILE_FORMATS if f in names)


# ------------------------------------------------------------------------------ ops
def select_ops(names: list[str], kinds: list[str], request: Any) -> tuple[tuple[int, ...], str | None]:
    """Resolve an op selection against a program's op ``names`` and ``kinds`` (program order).

    ``request``: None (every op), or a comma-separated string / a sequence of items, each

    * an op index, ``5``; negative counts from the end, ``-1`` is the last op;
    * a half-open index range ``A:B`` (python slice bounds, either may be omitted or negative:
      ``3:7``, ``:10``, ``-5:``, ``:`` for every op);
    * an op kind, ``conv2d``: every op of that kind;
    * an op name, or a glob pattern over names, ``blocks_3*``.

    The selection is the union, in program order. Every item must select at least one op: an unknown
    name or kind, an index or bound out of range or an empty range is refused (all of them named in one
    message). Returns the indices and the request as one normalized string (None for None).
    """
    if request is None:
        return tuple(range(len(names))), None
    items = _items(request, "ops")
    if not items:
        raise VectorsError("ops selection is empty: name ops, kinds or index ranges (e.g. conv2d,0:3)")
    n = len(names)
    chosen: set[int] = set()
    problems: list[str] = []
    for item in items:
        picked = _resolve_item(item, names, kinds, n, problems)
        chosen.update(picked)
    if problems:
        raise VectorsError(f"ops selection {_text(request)!r}: " + "; ".join(problems))
    return tuple(sorted(chosen)), _text(request)


def _resolve_item(item: Any, names: list[str], kinds: list[str], n: int, problems: list[str]) -> range | list[int]:
    span = f"0..{n - 1} or {-n}..-1"
    if isinstance(item, bool) or not isinstance(item, (Integral, str)):
        problems.append(f"{item!r} is not an op name, kind, index or A:B range")
        return []
    if isinstance(item, Integral) or _INDEX.fullmatch(item.strip()):
        index = int(item)
        if not -n <= index < n:
            problems.append(f"op index {index} is out of range (the program has {n} ops: {span})")
            return []
        return [index % n]
    text = item.strip()
    if not text:
        problems.append("an empty item (two commas in a row, or one at an end?)")
        return []
    match = _RANGE.fullmatch(text)
    if match:
        bounds = []
        for bound, default in zip(match.groups(), (0, n)):
            if not bound:
                bounds.append(default)
                continue
            if not _INDEX.fullmatch(bound):
                problems.append(f"range {text!r}: {bound!r} is not an index")
                return []
            value = int(bound)
            if not -n <= value <= n:
                problems.append(f"range {text!r}: bound {value} is out of range (the program has {n} ops: {-n}..{n})")
                return []
            bounds.append(value + n if value < 0 else value)
        if bounds[0] >= bounds[1]:
            problems.append(f"range {text!r} selects no op (it is half-open: A:B is A .. B-1)")
            return []
        return range(bounds[0], bounds[1])
    if ":" in text:
        problems.append(f"{text!r} is not an A:B index range")
        return []
    picked = [i for i in range(n) if kinds[i] == text or fnmatch.fnmatchcase(names[i], text)]
    if not picked:
        if text in OP_TABLE:
            present = ", ".join(dict.fromkeys(kinds))
            problems.append(f"the program has no {text} op (its kinds: {present})")
        else:
            close = difflib.get_close_matches(text, list(dict.fromkeys(kinds + names)), n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            problems.append(f"no op name or kind matches {text!r}{hint}")
    return picked


def _items(value: Any, what: str) -> list:
    """A comma-separated string or a sequence (whose strings may hold commas too) as a flat list."""
    if isinstance(value, (str, Integral)) and not isinstance(value, bool):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise VectorsError(f"{what} {value!r}: give a comma-separated string or a list") from None
    flat = []
    for item in items:
        flat.extend(item.split(",") if isinstance(item, str) else [item])
    return flat


def _text(value: Any) -> str:
    """A request as one comma-separated string (how the manifest and the messages show it)."""
    if isinstance(value, str):
        return value.strip()
    try:
        return ",".join(str(item).strip() for item in value)
    except TypeError:
        return str(value)


def make_selection(program, *, formats=None, ops=None, accumulators: bool = False) -> Selection:
    """The selection ``formats`` / ``ops`` / ``accumulators`` of :func:`export_vectors` on ``program``,
    checked before anything is computed."""
    if not isinstance(accumulators, bool):
        raise VectorsError(f"accumulators must be True or False, got {accumulators!r}")
    chosen_formats = parse_formats(formats)
    kinds = [op.kind for op in program.ops]
    indices, request = select_ops([op.name for op in program.ops], kinds, ops)
    if accumulators and not any(kinds[i] in ACCUMULATOR_KINDS for i in indices):
        raise VectorsError(
            f"accumulators: none of the selected ops is a {' or '.join(ACCUMULATOR_KINDS)} (only layers have them)"
        )
    return Selection(chosen_formats, indices, accumulators, request)
