"""The search space of a rank search: one discrete action per layer matrix.

A :class:`SearchSpace` is built once per model. It lists the factorizable matrices (optionally only those
whose module path matches one of a list of ``fnmatch`` patterns), decomposes each once into an
:class:`~npuq.lrf.SVDCache`, and gives every matrix the same list of choices:

* a fraction ``f`` of the matrix's *break-even* rank ``r_be = m*n/(m+n)`` (``basis="break_even"``, the
  default) or of its full rank ``min(m, n)`` (``basis="full_rank"``), rounded down, at least 1. With the
  break-even basis ``f`` is about the fraction of the matrix's weights kept: ``r*(m+n) = f*m*n``;
* "keep": the matrix stays dense -- or, when the space was given a cap for it (an already factorized
  layer, see :func:`densify`), keeps its current rank.

A rank at or above ``r_be`` would not save anything and resolves to "keep". A rank above a matrix's cap
is lowered to the cap, so that a search on a fine-tuned factorized model never grows a layer back.

A *candidate* is a tuple of choice indices, one per matrix in :attr:`SearchSpace.slots` order: hashable,
and a JSON list as it is. Two candidates may resolve to the same ranks (several fractions below a cap);
:meth:`SearchSpace.key` is the resolved ranks, on which evaluations are memoized.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn

from npuq.lrf.factorize import SVDCache, factorizable_layers, factorize, factorized_ranks
from npuq.lrf.layers import FactorizedLSTM, break_even_rank, pays_off
from npuq.lrf.report import compression_report

__all__ = ["DEFAULT_FRACTIONS", "KEEP", "Candidate", "SearchSpace", "Slot", "densify"]

DEFAULT_FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7)
KEEP = "keep"
BASES = ("break_even", "full_rank")
SCOPES = ("model", "layers")

Candidate = tuple[int, ...]


@dataclass(frozen=True)
class Slot:
    """One matrix of the search: the layer at ``path`` (its ``matrix``: ``"weight"`` or an LSTM gate matrix),
    of ``shape`` (m, n) with ``bias`` values counted with it, ``kind`` the layer type, ``position`` its index
    in the model's order, ``cap`` the largest rank allowed (``None``: the matrix is dense now)."""

    path: str
    matrix: str
    kind: str
    shape: tuple[int, int]
    bias: int
    position: int
    cap: int | None = None

    @property
    def name(self) -> str:
        """``path`` for one-matrix layers, ``path/matrix`` for LSTM gate matrices: the parameter name of a
        trial and the key of a ranks table."""
        return self.path if self.matrix == "weight" else f"{self.path}/{self.matrix}"

    @property
    def break_even(self) -> float:
        return break_even_rank(*self.shape)

    @property
    def dense_params(self) -> int:
        m, n = self.shape
        return m * n + self.bias

    def params(self, rank: int | None) -> int:
        m, n = self.shape
        return (m * n if rank is None else rank * (m + n)) + self.bias


def densify(model: nn.Module) -> tuple[nn.Module, dict]:
    """A copy of ``model`` with every factorized layer replaced by its dense product, and the ranks the
    factorized layers had: ``{path: rank}`` / ``{path: {matrix: rank}}`` as :func:`~npuq.lrf.factorized_ranks`.

    The product ``left @ right`` of a fine-tuned pair of factors has rank <= r, so its truncated SVD at any
    rank r' <= r is the best rank-r' approximation of what the fine-tuned layer computes, and at r' = r it is
    that layer exactly (to rounding). This is how a search runs again on a factorized model."""
    import copy

    ranks = factorized_ranks(model)
    dense = copy.deepcopy(model)
    for path in ranks:
        module = dense.get_submodule(path)
        replacement = module.to_lstm() if isinstance(module, FactorizedLSTM) else module.to_dense()
        replacement.train(module.training)
        if path == "":
            return replacement, ranks
        parent_path, _, name = path.rpartition(".")
        setattr(dense.get_submodule(parent_path), name, replacement)
    return dense, ranks


def _matches(path: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


class SearchSpace:
    """Per-matrix rank choices over the factorizable layers of ``model``.

    Args:
        model: a dense model, or a partly factorized one (its factorized layers are densified with
            :func:`densify` and capped at their current ranks).
        layers: ``fnmatch`` patterns of module paths to search (e.g. ``["features.*.body.0", "classifier"]``);
            default: every factorizable layer.
        fractions: the rank fractions offered to every matrix, each in (0, 1].
        basis: ``"break_even"`` (fractions of ``m*n/(m+n)``) or ``"full_rank"`` (of ``min(m, n)``).
        keep: offer the "keep" choice (dense, or the current rank of a capped matrix) as the last choice.
        caps: extra rank caps ``{path: rank}`` / ``{path: {matrix: rank}}`` (merged with those of
            factorized layers).
        reference_size: the parameter count compression is measured against (default: the dense model's,
            or its searched layers' with ``scope="layers"``); give the original model's size when searching
            a model that was compressed before.
        scope: ``"model"`` (:meth:`size` counts every parameter) or ``"layers"`` (only the searched matrices).
        cache: an :class:`~npuq.lrf.SVDCache` of the dense view; default: computed here, once.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[str] | None = None,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        basis: str = "break_even",
        keep: bool = True,
        caps: dict | None = None,
        reference_size: int | None = None,
        scope: str = "model",
        cache: SVDCache | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        fractions = tuple(fractions)
        for f in fractions:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not (math.isfinite(f) and 0 < f <= 1):
                raise ValueError(f"every rank fraction must be a number in (0, 1], got {f!r}")
        if len(set(fractions)) != len(fractions):
            raise ValueError(f"the rank fractions must be distinct, got {list(fractions)}")
        if not fractions and not keep:
            raise ValueError("the search space needs at least one choice: give fractions or keep=True")
        self.fractions = tuple(sorted(float(f) for f in fractions))
        self.basis = basis
        self.keep = bool(keep)
        self.scope = scope
        self.model, current = densify(model)
        merged = dict(current)
        merged.update(caps or {})
        patterns = list(layers) if layers else None
        found = factorizable_layers(self.model)
        if patterns is not None:
            unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(path, p) for path in found)]
            if unmatched:
                raise ValueError(
                    f"layer pattern(s) {unmatched} match no factorizable layer; factorizable: "
                    f"{', '.join(found) or 'none'}"
                )
        base = compression_report(self.model)
        rows = {(row.path, row.matrix): row for row in base.layers}
        slots = []
        for position, (path, shapes) in enumerate(found.items()):
            if patterns is not None and not _matches(path, patterns):
                continue
            for matrix, shape in shapes.items():
                cap = merged.get(path)
                if isinstance(cap, dict):
                    cap = cap.get(matrix)
                if cap is not None and not (isinstance(cap, int) and 1 <= cap <= min(shape)):
                    raise ValueError(
                        f"the rank cap of {path!r} {matrix} must be an int in [1, {min(shape)}], got {cap!r}"
                    )
                row = rows[(path, matrix)]
                slots.append(Slot(path, matrix, row.kind, tuple(shape), row.bias, position, cap))
        if not slots:
            raise ValueError(
                f"{type(model).__name__} has no factorizable layer to search"
                + (f" matching {patterns}" if patterns else "")
            )
        self.slots: tuple[Slot, ...] = tuple(slots)
        self.layer_count = len(found)
        self._fixed = base.model_params_before - sum(slot.dense_params for slot in self.slots)
        self.dense_size = base.model_params_before if scope == "model" else self._searched_dense()
        self.reference_size = int(reference_size) if reference_size is not None else self.dense_size
        if self.reference_size <= 0:
            raise ValueError(f"reference_size must be > 0, got {reference_size!r}")
        self.cache = cache if cache is not None else SVDCache(self.model)
        self._table = [self._slot_ranks(slot) for slot in self.slots]

    # ------------------------------------------------------------------------------------------ choices
    @property
    def labels(self) -> tuple[str, ...]:
        """One label per choice index: the fraction, or ``"keep"``."""
        return tuple(f"{f:g}" for f in self.fractions) + ((KEEP,) if self.keep else ())

    @property
    def n_choices(self) -> int:
        return len(self.fractions) + int(self.keep)

    def __len__(self) -> int:
        return len(self.slots)

    def _slot_ranks(self, slot: Slot) -> tuple:
        """The rank (``None``: dense) each choice index gives this matrix."""
        m, n = slot.shape
        basis = slot.break_even if self.basis == "break_even" else min(m, n)
        ranks = []
        for f in self.fractions:
            rank = max(1, math.floor(f * basis))
            if slot.cap is not None:
                rank = min(rank, slot.cap)
            ranks.append(rank if pays_off(rank, m, n) else None)
        if self.keep:
            ranks.append(slot.cap if slot.cap is not None and pays_off(slot.cap, m, n) else None)
        return tuple(ranks)

    def rank_table(self) -> list[tuple]:
        """``[ranks of every choice]`` per slot."""
        return list(self._table)

    def check(self, candidate) -> Candidate:
        """``candidate`` as a tuple of ints, or a ValueError saying what is wrong with it."""
        try:
            values = tuple(candidate)
        except TypeError:
            raise TypeError(
                f"a candidate is a sequence of {len(self)} choice indices, got {type(candidate).__name__}"
            ) from None
        if len(values) != len(self.slots):
            raise ValueError(
                f"a candidate of this space has {len(self.slots)} choice indices (one per matrix), got {len(values)}"
            )
        for slot, value in zip(self.slots, values):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.n_choices:
                raise ValueError(f"choice for {slot.name!r} must be an int in [0, {self.n_choices - 1}], got {value!r}")
        return tuple(int(v) for v in values)

    def key(self, candidate) -> tuple:
        """The resolved ranks of ``candidate`` (``None``: dense), one per slot: the memoization key."""
        return tuple(table[i] for table, i in zip(self._table, self.check(candidate)))

    def ranks(self, candidate) -> dict:
        """The ``ranks`` argument of :func:`~npuq.lrf.factorize` for ``candidate``: ``{path: rank}`` (or
        ``{path: {matrix: rank}}`` for LSTMs), dense matrices left out. JSON-serializable."""
        ranks: dict = {}
        for slot, rank in zip(self.slots, self.key(candidate)):
            if rank is None:
                continue
            if slot.kind == "LSTM":
                ranks.setdefault(slot.path, {})[slot.matrix] = rank
            else:
                ranks[slot.path] = rank
        return ranks

    def candidate(self, ranks: dict) -> Candidate:
        """The candidate whose choices give ranks closest to (not above) ``ranks``: the inverse of
        :meth:`ranks` for ranks on the grid. Matrices missing from ``ranks`` take "keep" (or the smallest
        choice when the space has no "keep")."""
        values = []
        for slot, table in zip(self.slots, self._table):
            wanted = ranks.get(slot.path)
            if isinstance(wanted, dict):
                wanted = wanted.get(slot.matrix)
            if wanted is None:
                values.append(len(table) - 1)
                continue
            fitting = [i for i, r in enumerate(table) if r is not None and r <= wanted]
            values.append(max(fitting, key=lambda i: table[i]) if fitting else 0)
        return tuple(values)

    @property
    def uncompressed(self) -> Candidate:
        """Every matrix at its largest choice ("keep" when offered)."""
        return tuple([self.n_choices - 1] * len(self.slots))

    # -------------------------------------------------------------------------------------------- sizes
    def _searched_dense(self) -> int:
        return sum(slot.dense_params for slot in self.slots)

    def size(self, candidate) -> int:
        """Parameters of the model ``candidate`` builds (``scope="layers"``: of its searched matrices only),
        from the shapes alone."""
        searched = sum(slot.params(rank) for slot, rank in zip(self.slots, self.key(candidate)))
        return searched + (self._fixed if self.scope == "model" else 0)

    def expected_size(self, probabilities) -> float:
        """Mean :meth:`size` of candidates that draw every matrix's choice from ``probabilities`` (one per
        choice index, summing to 1), independently."""
        q = [float(v) for v in probabilities]
        if len(q) != self.n_choices or any(not (math.isfinite(v) and v >= 0) for v in q) or abs(sum(q) - 1) > 1e-9:
            raise ValueError(f"probabilities must be {self.n_choices} non-negative numbers summing to 1, got {q}")
        total = float(self._fixed if self.scope == "model" else 0)
        for slot, table in zip(self.slots, self._table):
            total += sum(v * slot.params(rank) for v, rank in zip(q, table))
        return total

    def start_probabilities(self, target: float, low: float = 0.05, high: float = 0.95) -> list[float]:
        """Choice probabilities (the same for every matrix) under which the mean candidate has the target's
        size, ``reference_size / target``: "keep" at a probability in ``[low, high]``, the rank fractions
        sharing the rest evenly; when even ``low`` leaves the mean too large, the fractions' shares are
        tilted geometrically towards the smaller ranks. A controller that starts here draws candidates
        around the target from its first step, whatever the target and the current ranks (the caps of a
        re-search)."""
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"target must be a compression > 0, got {target!r}")
        k = len(self.fractions)
        wanted = self.reference_size / target

        def probabilities(keep: float, tilt: float) -> list[float]:
            weights = [math.exp(-tilt * i) for i in range(k)]
            share = (1 - keep) if self.keep else 1.0
            q = [share * w / sum(weights) for w in weights] if k else []
            return q + ([keep] if self.keep else [])

        if self.keep and k:
            at_low, at_high = self.expected_size(probabilities(low, 0.0)), self.expected_size(probabilities(high, 0.0))
            if at_high <= wanted:
                return probabilities(high, 0.0)
            if at_low <= wanted:
                # linear in the keep probability
                keep = low + (high - low) * (wanted - at_low) / (at_high - at_low)
                return probabilities(keep, 0.0)
        elif not k:
            return probabilities(1.0, 0.0)
        keep = low if self.keep else 0.0
        lo, hi = 0.0, 20.0  # the size falls as the tilt grows; 20 puts nearly everything on the smallest rank
        if self.expected_size(probabilities(keep, hi)) > wanted:
            return probabilities(keep, hi)
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.expected_size(probabilities(keep, mid)) > wanted:
                lo = mid
            else:
                hi = mid
        return probabilities(keep, hi)

    def compression(self, candidate) -> float:
        """``reference_size / size(candidate)`` (above 1: smaller)."""
        return self.reference_size / self.size(candidate)

    # ------------------------------------------------------------------------------------------ building
    def build(self, candidate) -> nn.Module:
        """The factorized model of ``candidate``: a copy of the dense view with the ranks applied, factors
        sliced from the cached SVDs."""
        return factorize(self.model, self.ranks(candidate), cache=self.cache, above_break_even="ignore")

    def features(self):
        """A float tensor (slots x features) describing each matrix for a policy: log sizes, position,
        break-even and cap, share of the parameters, layer kind."""
        import torch

        total = sum(slot.dense_params for slot in self.slots)
        kinds = ("Linear", "Conv2d", "LSTM")
        rows = []
        last = max(self.layer_count - 1, 1)
        for slot in self.slots:
            m, n = slot.shape
            cap_share = 1.0 if slot.cap is None else slot.cap / slot.break_even
            rows.append(
                [
                    math.log(m) / 8,
                    math.log(n) / 8,
                    math.log(slot.break_even) / 8,
                    slot.position / last,
                    slot.dense_params / total,
                    min(cap_share, 1.0),
                ]
                + [float(slot.kind == kind) for kind in kinds]
            )
        return torch.tensor(rows, dtype=torch.float32)

    def describe(self) -> dict:
        """The space as JSON: choices, and per slot its shape, cap and rank per choice."""
        return {
            "basis": self.basis,
            "labels": list(self.labels),
            "scope": self.scope,
            "reference_size": self.reference_size,
            "dense_size": self.dense_size,
            "slots": [
                {"name": slot.name, "shape": list(slot.shape), "kind": slot.kind, "cap": slot.cap, "ranks": list(table)}
                for slot, table in zip(self.slots, self._table)
            ],
        }

    def __repr__(self) -> str:
        return (
            f"SearchSpace({len(self.slots)} matrices x {self.n_choices} choices, basis={self.basis}, "
            f"scope={self.scope}, reference {self.reference_size:,} parameters)"
        )
