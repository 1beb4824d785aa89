"""Evaluating candidates: one call of ``evaluate(model) -> error`` per distinct set of ranks.

``evaluate`` is the task's error on a small development set (top-1 error for a classifier, WER for a
speech recognizer): a float, lower is better. An :class:`Evaluator` builds each candidate from the
:class:`~npuq.lrf.search.space.SearchSpace`, calls ``evaluate`` on it, and remembers the result under the
candidate's resolved ranks, so a candidate drawn again (or another candidate with the same ranks) costs
nothing. Every candidate asked for is appended to :attr:`Evaluator.history`.

The reward of the reinforcement-learning controller is :func:`reward`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from npuq.lrf.search.space import SearchSpace

__all__ = ["Evaluator", "Record", "RewardConfig", "reward"]


@dataclass(frozen=True)
class Record:
    """One evaluated candidate: its choice indices, the ranks they resolve to, the model size and
    compression, the error, and where it came from (``source``: strategy and round; ``cached``: the error
    came from the memo)."""

    candidate: tuple
    ranks: dict
    size: int
    compression: float
    error: float
    cached: bool = False
    source: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        entry = asdict(self)
        entry["candidate"] = list(self.candidate)
        return entry

    @classmethod
    def from_dict(cls, entry: dict) -> Record:
        return cls(
            tuple(entry["candidate"]),
            entry["ranks"],
            int(entry["size"]),
            float(entry["compression"]),
            float(entry["error"]),
            bool(entry.get("cached", False)),
            dict(entry.get("source", {})),
        )


class Evaluator:
    """Memoized evaluation of candidates of ``space``.

    ``evaluate(model) -> float`` is called once per distinct set of ranks; ``baseline_error`` is the error
    of the uncompressed model (evaluated on first access unless given). ``source`` is stored with every
    record (e.g. ``{"strategy": "reinforce", "round": 1}``).
    """

    def __init__(
        self, space: SearchSpace, evaluate: Callable, *, baseline_error: float | None = None, source: dict | None = None
    ):
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
        if not callable(evaluate):
            raise TypeError(f"evaluate must be a callable model -> error, got {type(evaluate).__name__}")
        self.space = space
        self.evaluate_model = evaluate
        self.source = dict(source or {})
        self.memo: dict[tuple, float] = {}
        self.history: list[Record] = []
        self.evaluations = 0
        self.seconds = 0.0
        self._baseline = None if baseline_error is None else float(baseline_error)

    def _call(self, model) -> float:
        start = time.perf_counter()
        error = self.evaluate_model(model)
        self.seconds += time.perf_counter() - start
        self.evaluations += 1
        try:
            error = float(error)
        except (TypeError, ValueError):
            raise TypeError(f"evaluate must return a float error, got {type(error).__name__} {error!r:.60}") from None
        if not math.isfinite(error):
            raise ValueError(f"evaluate returned a non-finite error {error!r}")
        return error

    @property
    def baseline_error(self) -> float:
        """The error of the model this space was built from, without any change (evaluated once)."""
        if self._baseline is None:
            self._baseline = self._call(self.space.model)
        return self._baseline

    def known(self, candidate) -> float | None:
        return self.memo.get(self.space.key(candidate))

    def remember(self, candidate, error: float) -> None:
        """Record an error measured elsewhere (another worker of a shared study)."""
        self.memo[self.space.key(candidate)] = float(error)

    def __call__(self, candidate, **source) -> Record:
        candidate = self.space.check(candidate)
        key = self.space.key(candidate)
        cached = key in self.memo
        if cached:
            error = self.memo[key]
        else:
            error = self._call(self.space.build(candidate))
            self.memo[key] = error
        record = Record(
            candidate,
            self.space.ranks(candidate),
            self.space.size(candidate),
            self.space.compression(candidate),
            error,
            cached,
            {**self.source, **source},
        )
        self.history.append(record)
        return record


@dataclass(frozen=True)
class RewardConfig:
    """The reward's constants (see :func:`reward`). ``error_scale``: the error increase worth one unit of
    reward; ``penalty``: reward lost per unit of ``ln(target / compression)`` below the target;
    ``bonus``: reward per unit of ``ln(compression / target)`` above it (small: beyond the target, error
    matters most); ``error_cap``: error increases beyond it count as this much (a broken candidate at chance
    level is no worse than one 20 points off, so that a few of them do not drown the differences between the
    usable ones)."""

    target: float = 2.0
    error_scale: float = 0.01
    penalty: float = 10.0
    bonus: float = 0.5
    error_cap: float = 0.2

    def __post_init__(self):
        for name in ("target", "error_scale", "error_cap"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"reward {name} must be a finite number > 0, got {value!r}")
        for name in ("penalty", "bonus"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"reward {name} must be a finite number >= 0, got {value!r}")


def reward(error: float, compression: float, baseline_error: float, config: RewardConfig) -> float:
    """``R = -min(e - e0, cap)/s - P * max(0, ln(c*/c)) + B * max(0, ln(c/c*))``.

    ``e`` the candidate's error, ``e0`` the uncompressed model's, ``s = error_scale``, ``cap = error_cap``,
    ``c`` the compression, ``c* = target``, ``P = penalty``, ``B = bonus``. Below the target the size term
    dominates (the constraint); above it the error term does, with a small bonus that breaks ties towards
    smaller models. Logarithms make a step from 2x to 4x worth as much as one from 4x to 8x.
    """
    shortfall = max(0.0, math.log(config.target / compression))
    excess = max(0.0, math.log(compression / config.target))
    increase = min(error - baseline_error, config.error_cap)
    return -increase / config.error_scale - config.penalty * shortfall + config.bonus * excess
