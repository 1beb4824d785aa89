"""What a search returns: every evaluated candidate, and the ones worth keeping."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from npuq.lrf.search.evaluation import Record

__all__ = ["SearchResult", "pareto_front"]


def _ranks_key(record: Record) -> str:
    return json.dumps(record.ranks, sort_keys=True)


def pareto_front(records: Iterable[Record]) -> list[Record]:
    """The records no other record dominates in (error, size) -- both lower is better -- one per distinct
    set of ranks, sorted by size."""
    unique = {}
    for record in records:
        unique.setdefault(_ranks_key(record), record)
    points = sorted(unique.values(), key=lambda r: (r.size, r.error))
    front, best_error = [], float("inf")
    for record in points:
        # sorted by size: a record is dominated iff a smaller (or equal-size, earlier) one has no higher error
        if record.error < best_error:
            front.append(record)
            best_error = record.error
    return front


@dataclass
class SearchResult:
    """The outcome of one search at ``target`` compression.

    ``history``: every candidate drawn, in order (memoized repeats included, marked ``cached``);
    ``evaluations``: calls of ``evaluate`` (distinct ranks); ``error_limit``: ``baseline_error +
    max_error_increase``.
    """

    strategy: str
    target: float
    baseline_error: float
    error_limit: float
    history: list[Record] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def best(self) -> Record | None:
        """The smallest candidate whose error is within the limit (``None`` when none is)."""
        ok = [r for r in self.history if r.error <= self.error_limit]
        return min(ok, key=lambda r: (r.size, r.error)) if ok else None

    @property
    def at_target(self) -> Record | None:
        """The lowest-error candidate reaching the target compression (``None`` when none does)."""
        ok = [r for r in self.history if r.compression >= self.target * (1 - 1e-12)]
        return min(ok, key=lambda r: (r.error, r.size)) if ok else None

    @property
    def front(self) -> list[Record]:
        return pareto_front(self.history)

    def choose(self) -> Record:
        """The candidate to carry on with: :attr:`at_target`; when no candidate reached the target, the most
        compressed one of the front within the error limit (a usable step towards the target), and only
        when there is none the most compressed one of the front."""
        chosen = self.at_target
        if chosen is None:
            front = self.front
            usable = [r for r in front if r.error <= self.error_limit]
            chosen = max(usable or front, key=lambda r: (r.compression, -r.error))
        return chosen

    def to_dict(self) -> dict:
        def entry(record):
            return None if record is None else record.to_dict()

        return {
            "strategy": self.strategy,
            "target": self.target,
            "baseline_error": self.baseline_error,
            "error_limit": self.error_limit,
            "evaluations": self.evaluations,
            "candidates": len(self.history),
            "seconds": self.seconds,
            "best": entry(self.best),
            "at_target": entry(self.at_target),
            "front": [r.to_dict() for r in self.front],
            "history": [r.to_dict() for r in self.history],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SearchResult:
        known = {
            "strategy",
            "target",
            "baseline_error",
            "error_limit",
            "evaluations",
            "candidates",
            "seconds",
            "best",
            "at_target",
            "front",
            "history",
        }
        return cls(
            data["strategy"],
            float(data["target"]),
            float(data["baseline_error"]),
            float(data["error_limit"]),
            [Record.from_dict(r) for r in data["history"]],
            int(data["evaluations"]),
            float(data["seconds"]),
            {k: v for k, v in data.items() if k not in known},
        )
