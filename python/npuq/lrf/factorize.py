"""Factorize the layers of a model: pick them by module path, give each a rank, get a model whose
layers are :mod:`~npuq.lrf.layers` products of thin factors.

    ranks = {"classifier": 32, "features.18.0": 0.25, "rnn": {"weight_ih_l0": 16, "weight_hh_l0": 8}}
    small = factorize(model, ranks)

A rank search evaluates many candidates: an :class:`SVDCache` computes each layer's full SVD once,
after which a candidate with any ranks only slices it.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from npuq.lrf.layers import (
    FactorizedConv2d,
    FactorizedLinear,
    FactorizedLSTM,
    SVDFunction,
    UnknownLayerError,
    _call_svd,
    _check_finite,
    _check_supported,
    _layer_name,
    _lstm_ranks,
    _split,
    break_even_rank,
    matrix_shapes,
    pays_off,
    resolve_rank,
    torch_truncated_svd,
)

__all__ = ["KeptDenseWarning", "SVDCache", "UnknownLayerError", "factorizable_layers", "factorize", "factorized_ranks"]

FACTORIZED_TYPES = (FactorizedLinear, FactorizedConv2d, FactorizedLSTM)
_BUILDERS: dict[type, Any] = {nn.Linear: FactorizedLinear, nn.Conv2d: FactorizedConv2d, nn.LSTM: FactorizedLSTM}
_ON_DENSE = ("warn", "ignore", "raise")


class KeptDenseWarning(UserWarning):
    """A layer was given a rank at or above its break-even rank and was kept dense."""


def _named_layers(model: nn.Module):
    """``(path, module)`` like ``model.named_modules()``, without the insides of factorized layers (their
    ``first`` / ``second`` are factors, not layers of the model)."""
    seen = set()

    def visit(module, path):
        if id(module) in seen:
            return
        seen.add(id(module))
        yield path, module
        if isinstance(module, FACTORIZED_TYPES):
            return
        for name, child in module.named_children():
            yield from visit(child, f"{path}.{name}" if path else name)

    yield from visit(model, "")


def factorizable_layers(model: nn.Module) -> dict[str, dict[str, tuple[int, int]]]:
    """``{module path: {matrix name: (m, n)}}`` of every layer :func:`factorize` accepts.

    ``nn.Linear`` and ``nn.Conv2d`` with ``groups == 1`` have one matrix, ``"weight"`` (out x in,
    C_out x C_in*kh*kw); an ``nn.LSTM`` (without projections) has its gate matrices ``"weight_ih_l0"``,
    ``"weight_hh_l0"``, ... Grouped and depthwise convolutions, other layer types and layers already
    factorized are not listed. The structure mirrors the ``ranks`` argument of :func:`factorize`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = {}
    for path, module in _named_layers(model):
        shapes = None if isinstance(module, FACTORIZED_TYPES) else matrix_shapes(module)
        if shapes is not None:
            layers[path] = shapes
    return layers


def factorized_ranks(model: nn.Module) -> dict:
    """The ``ranks`` that rebuild the structure of a factorized model from its original: ``{path: rank}``
    for factorized Linear/Conv2d layers, ``{path: {matrix name: rank}}`` for factorized LSTMs (their dense
    matrices left out). ``factorize(original, factorized_ranks(model))`` then accepts
    ``model.state_dict()``."""
    ranks = {}
    for path, module in _named_layers(model):
        if isinstance(module, (FactorizedLinear, FactorizedConv2d)):
            ranks[path] = module.rank
        elif isinstance(module, FactorizedLSTM):
            ranks[path] = {name: rank for name, rank in module.ranks.items() if rank is not None}
    return ranks


def _lookup(model: nn.Module, path) -> nn.Module:
    if not isinstance(path, str):
        raise TypeError(f"the keys of ranks must be module paths (str), got {type(path).__name__} {path!r}")
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.6)
    hint = f"; close names: {', '.join(map(repr, close))}" if close else ""
    raise UnknownLayerError(
        f"{type(model).__name__} has no module {path!r}{hint} (list the factorizable ones "
        "with npuq.lrf.factorizable_layers(model))"
    )


def _matrix(module: nn.Module, name: str, shape: tuple[int, int]) -> torch.Tensor:
    return getattr(module, name).reshape(shape)


class SVDCache:
    """The full (thin) SVD of each layer matrix, computed once, so that factors of any rank are slices.

    ``SVDCache(model)`` computes the SVDs of all of :func:`factorizable_layers` now; ``SVDCache()``
    computes each on its first use. Pass it as ``factorize(model, ranks, cache=cache)``: the result is
    the one ``factorize(model, ranks)`` gives, to float64 rounding (the truncated SVD is the full one
    sliced). ``svd`` computes the full decompositions, called with ``rank = min(m, n)``; default:
    :func:`~npuq.lrf.layers.torch_truncated_svd` (``torch.linalg.svd`` in float64).

    Entries are keyed by module path and matrix name and remember the weights they came from; using the
    cache with other weights at a path (a fine-tuned model) raises a ValueError rather than returning
    the factors of stale weights. Memory: about ``(m + n + 1) * min(m, n)`` float64 values per matrix,
    plus a copy of the matrix.
    """

    def __init__(self, model: nn.Module | None = None, *, svd: SVDFunction | None = None):
        if svd is not None and not callable(svd):
            raise TypeError(f"svd must be a callable (matrix, rank) -> (U, S, Vt), got {type(svd).__name__}")
        self.svd = svd
        self._entries: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if model is not None:
            self.precompute(model)

    def precompute(self, model: nn.Module, paths=None) -> SVDCache:
        """Compute the SVDs of the layers at ``paths`` (default: all factorizable layers) of ``model``."""
        layers = factorizable_layers(model)
        for path in layers if paths is None else paths:
            module = _lookup(model, path)
            shapes = _check_supported(module, path)
            _check_finite(module, path)
            for name, shape in shapes.items():
                self._full(path, name, _matrix(module, name, shape), _layer_name(module, path))
        return self

    def _full(self, path: str, name: str, matrix: torch.Tensor, what: str):
        key = (path, name)
        snapshot = matrix.detach().to("cpu")
        entry = self._entries.get(key)
        if entry is not None:
            if not torch.equal(entry[0], snapshot):
                raise ValueError(
                    f"the weights of {what} ({name}) differ from those this SVDCache decomposed; "
                    "build a new SVDCache for changed weights"
                )
            return entry
        # the whole spectrum is wanted here: LAPACK's job, where a truncated solver has nothing to skip
        svd = self.svd if self.svd is not None else torch_truncated_svd
        u, s, vt = _call_svd(svd, matrix, min(matrix.shape), f"{what}.{name}")
        # slicing the leading r columns is the truncated SVD only if S is in descending order
        order = torch.argsort(s, descending=True)
        entry = (snapshot.clone(), u[:, order], s[order], vt[order])
        self._entries[key] = entry
        return entry

    def factors(self, path: str, name: str, matrix: torch.Tensor, rank: int, what: str | None = None):
        """The balanced rank-``rank`` factors ``(left, right)`` of ``matrix``, the ``name`` matrix of the layer at
        ``path``."""
        _, u, s, vt = self._full(path, name, matrix, what or repr(path))
        return _split(u[:, :rank], s[:rank], vt[:rank])

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._entries.clear()

    def __repr__(self) -> str:
        return f"SVDCache({len(self)} matrices)"


def _check_not_a_factor(model: nn.Module, path: str) -> None:
    if not path:
        return
    parts = path.split(".")
    for end in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:end])
        if isinstance(model.get_submodule(parent), FACTORIZED_TYPES):
            raise ValueError(
                f"{path!r} is a factor of the factorized layer {parent or '(the model)'!r}, not a layer of the model"
            )


def _plan(model: nn.Module, ranks: Mapping, on_dense: str):
    """Check every entry of ``ranks`` against ``model`` before anything changes: ``[(path, {matrix: rank or
    None})]`` of the layers to factorize, and the ``(path, matrix, rank, break-even)`` kept dense."""
    plan, kept, paths_of = [], [], {}
    for path, value in ranks.items():
        module = _lookup(model, path)
        if id(module) in paths_of:
            raise ValueError(
                f"{paths_of[id(module)]!r} and {path!r} are the same module (registered twice); give "
                "its rank once, both registrations are replaced"
            )
        paths_of[id(module)] = path
        _check_not_a_factor(model, path)
        shapes = _check_supported(module, path)
        what = _layer_name(module, path)
        if value is None:
            continue
        if isinstance(module, nn.LSTM):
            matrix_ranks = _lstm_ranks(value, shapes, what)
        else:
            if isinstance(value, Mapping):
                matrix_ranks = _lstm_ranks(value, shapes, what)  # {"weight": r} for one-matrix layers
            else:
                matrix_ranks = {"weight": resolve_rank(value, shapes["weight"], what)}
        for name, rank in matrix_ranks.items():
            if rank is not None and not pays_off(rank, *shapes[name]):
                kept.append((path, name, rank, break_even_rank(*shapes[name])))
                matrix_ranks[name] = None
        if any(rank is not None for rank in matrix_ranks.values()):
            _check_finite(module, path)
            plan.append((path, matrix_ranks))
    if kept and on_dense == "raise":
        raise ValueError(
            f"ranks at or above the break-even rank m*n/(m+n) would not save parameters: {_describe_kept(kept)}"
        )
    return plan, kept


def _describe_kept(kept) -> str:
    return "; ".join(
        f"{path!r}" + (f" {name}" if name != "weight" else "") + f" rank {rank} >= {limit:.1f}"
        for path, name, rank, limit in kept
    )


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    # every registration of the module is replaced, so that a layer shared by two paths stays shared
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if child is old:
                setattr(parent, name, new)


def factorize(
    model: nn.Module,
    ranks: Mapping,
    *,
    svd: SVDFunction | None = None,
    cache: SVDCache | None = None,
    inplace: bool = False,
    above_break_even: str = "warn",
) -> nn.Module:
    """A copy of ``model`` (``model`` itself with ``inplace=True``) with the layers named in ``ranks``
    factorized.

    Args:
        model: any module; its ``nn.Linear``, ``nn.Conv2d`` (``groups == 1``) and ``nn.LSTM`` layers can be
            factorized (see :func:`factorizable_layers`).
        ranks: ``{module path: rank}`` with the paths of ``model.named_modules()``. A rank is an int in
            ``[1, min(m, n)]``, a float in ``(0, 1]`` (a fraction of the full rank ``min(m, n)``, rounded
            half up, at least 1) or ``None`` (keep dense). For an LSTM: one rank for all its gate
            matrices, or ``{"weight_ih_l0": r, "weight_hh_l0": r, "weight_ih_l0_reverse": r, ...}``
            (matrices left out stay dense).
        svd: ``(matrix, rank) -> (U, S, Vt, ...)`` run on a float64 numpy matrix; default: the native
            truncated SVD when available, else ``torch.linalg.svd`` in float64.
        cache: an :class:`SVDCache` to take the SVDs from (give ``svd`` to the cache, not here).
        inplace: replace the layers in ``model`` itself instead of a deep copy. When ``model`` itself
            is the layer to factorize (path ``""``), the new layer is returned and ``model`` is unchanged.
        above_break_even: what to do with a matrix whose rank is at or above its break-even rank
            ``m*n/(m+n)`` (where the factors would hold at least as many weights as the matrix): it is
            kept dense, and ``"warn"`` (default) issues one :class:`KeptDenseWarning` naming all such
            matrices, ``"ignore"`` keeps quiet (a rank search), ``"raise"`` raises a ValueError instead.

    Everything is checked before anything changes: unknown paths (:class:`UnknownLayerError`, a KeyError
    and ValueError, with close names), unsupported layer types, grouped convolutions and already
    factorized layers (ValueError naming the layer and its type), ranks out of range (ValueError giving
    the limit), NaN or inf weights (ValueError naming the layer). Hooks registered on a replaced layer
    are not carried over.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(ranks, Mapping):
        raise TypeError(f"ranks must be a dict {{module path: rank}}, got {type(ranks).__name__}")
    if above_break_even not in _ON_DENSE:
        raise ValueError(f"above_break_even must be one of {', '.join(map(repr, _ON_DENSE))}, got {above_break_even!r}")
    if svd is not None and not callable(svd):
        raise TypeError(f"svd must be a callable (matrix, rank) -> (U, S, Vt), got {type(svd).__name__}")
    if cache is not None:
        if not isinstance(cache, SVDCache):
            raise TypeError(f"cache must be an npuq.lrf.SVDCache, got {type(cache).__name__}")
        if svd is not None and svd is not cache.svd:
            raise ValueError("give the svd function to the SVDCache (SVDCache(svd=...)), not to factorize as well")

    plan, kept = _plan(model, ranks, above_break_even)
    if kept and above_break_even == "warn":
        warnings.warn(
            f"kept dense, their ranks are at or above the break-even rank m*n/(m+n): {_describe_kept(kept)}",
            KeptDenseWarning,
            stacklevel=2,
        )
    target = model if inplace else copy.deepcopy(model)
    for path, matrix_ranks in plan:
        module = target.get_submodule(path)
        builder = _BUILDERS[type(module)]
        what = _layer_name(module, path)
        factors = None
        if cache is not None:
            shapes = matrix_shapes(module)
            factors = {
                name: cache.factors(path, name, _matrix(module, name, shapes[name]), rank, what)
                for name, rank in matrix_ranks.items()
                if rank is not None
            }
        if builder is FactorizedLSTM:
            new = builder._from_layer(module, matrix_ranks, svd, path, factors)
        else:
            new = builder._from_layer(
                module, matrix_ranks["weight"], svd, path, None if factors is None else factors["weight"]
            )
        if path == "":
            target = new
        else:
            _replace(target, module, new)
    return target
