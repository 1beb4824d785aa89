"""Low-rank factorized layers: a weight matrix W (m x n) replaced by the product of two thin factors.

A truncated SVD ``W ~ U_r diag(S_r) V_r^T`` gives the best rank-r approximation of W in the Frobenius
norm (Eckart-Young). Each layer here stores it as two factors applied one after the other:

* :class:`FactorizedLinear`: ``Linear(n -> r, no bias)`` then ``Linear(r -> m, bias)``;
* :class:`FactorizedConv2d`: a k x k conv ``C_in -> r`` (the original stride, padding, dilation,
  padding mode; no bias), then a 1x1 conv ``r -> C_out`` with the bias; the matrix is the conv weight
  reshaped to ``C_out x (C_in * kh * kw)``;
* :class:`FactorizedLSTM`: a drop-in for ``nn.LSTM`` whose input and recurrent gate matrices
  (``weight_ih_l{k}`` 4H x I, ``weight_hh_l{k}`` 4H x H, and the ``_reverse`` ones) are each kept
  dense or factorized with their own rank.

The singular values are split evenly between the two factors, ``left = U_r sqrt(S_r)`` and
``right = sqrt(S_r) V_r^T``: balanced factors have similar value ranges, so that an 8-bit quantizer
later loses about as much precision on one as on the other (putting all of S into one factor would
stretch its range by the condition number of W and squash the other).

The SVD is computed in float64 on the CPU by a callable ``svd(matrix, rank) -> (U, S, Vt)`` (more
items, such as an error estimate, are ignored); :func:`_default_svd` picks it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

__all__ = [
    "FactorizedConv2d",
    "FactorizedLSTM",
    "FactorizedLinear",
    "UnknownLayerError",
    "balanced_factors",
    "break_even_rank",
    "matrix_shapes",
    "pays_off",
    "resolve_rank",
    "torch_truncated_svd",
]

SVDFunction = Callable[[np.ndarray, int], tuple]


# ------------------------------------------------------------------------------------------ ranks


def break_even_rank(m: int, n: int) -> float:
    """``m*n / (m+n)``: at this rank the two factors hold as many weights as the dense m x n matrix
    (the bias is the same in both and does not move it)."""
    return m * n / (m + n)


def pays_off(rank: int, m: int, n: int) -> bool:
    """Whether rank-``rank`` factors of an m x n matrix hold fewer weights than the matrix:
    ``rank * (m + n) < m * n``, i.e. ``rank`` strictly below :func:`break_even_rank`."""
    return rank * (m + n) < m * n


def resolve_rank(value, shape: tuple[int, int], what: str) -> int:
    """The integer rank meant by ``value`` for an m x n matrix named ``what`` (for the messages).

    An int is a rank in ``[1, min(m, n)]``; a float in ``(0, 1]`` is a fraction of the full rank
    ``min(m, n)``, rounded half up and at least 1. Ints and floats are told apart by type, so that
    ``1`` (rank one) and ``1.0`` (full rank) cannot be confused silently.
    """
    m, n = shape
    full = min(m, n)
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"rank of {what} must be an int or a float fraction, got a bool ({value})")
    if isinstance(value, Integral):
        rank = int(value)
        if not 1 <= rank <= full:
            raise ValueError(f"rank of {what} must be in [1, {full}] (min(m, n) of its {m} x {n} matrix), got {rank}")
        return rank
    if isinstance(value, Real):
        fraction = float(value)
        if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
            raise ValueError(
                f"a float rank of {what} is a fraction of its full rank {full} and must be in (0, 1], got {value!r}"
            )
        return max(1, min(full, math.floor(fraction * full + 0.5)))
    raise TypeError(
        f"rank of {what} must be an int (a rank) or a float in (0, 1] (a fraction of the full "
        f"rank), got {type(value).__name__}"
    )


# -------------------------------------------------------------------------------------------- SVD


def torch_truncated_svd(matrix, rank: int):
    """``(U[:, :rank], S[:rank], Vt[:rank])`` of a thin ``torch.linalg.svd`` in float64."""
    a = torch.as_tensor(matrix, dtype=torch.float64)
    u, s, vt = torch.linalg.svd(a, full_matrices=False)
    return u[:, :rank], s[:rank], vt[:rank]


def _default_svd() -> SVDFunction:
    """The SVD used when none is given: the native truncated SVD when its CPU path can run here (OpenBLAS
    from scipy-openblas32 loads), otherwise :func:`torch_truncated_svd`."""
    import importlib

    try:
        native = importlib.import_module("npuq.lrf.svd")
    except ImportError:
        return torch_truncated_svd
    available = getattr(native, "cpu_available", lambda: True)
    return native.truncated_svd if available() else torch_truncated_svd


def _float64(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the SVD returned {what} as {type(x).__name__}, not an array: {exc}") from None


def _call_svd(svd: SVDFunction, matrix: torch.Tensor, rank: int, what: str):
    """Run ``svd`` on a float64 copy of ``matrix`` (copied: a native routine may overwrite its input)
    and check what it returns."""
    m, n = matrix.shape
    a = np.array(matrix.detach().to("cpu", torch.float64).numpy(), dtype=np.float64, order="C", copy=True)
    result = svd(a, rank)
    try:
        u, s, vt = result[0], result[1], result[2]
    except (TypeError, IndexError, KeyError):
        raise TypeError(f"the SVD of {what} must return (U, S, Vt, ...), got {type(result).__name__}") from None
    u, s, vt = _float64(u, "U"), _float64(s, "S"), _float64(vt, "Vt")
    if u.shape != (m, rank) or s.shape != (rank,) or vt.shape != (rank, n):
        raise ValueError(
            f"the SVD of {what} ({m} x {n}) at rank {rank} must return U {(m, rank)}, S {(rank,)} and "
            f"Vt {(rank, n)}; got {tuple(u.shape)}, {tuple(s.shape)}, {tuple(vt.shape)}"
        )
    if not (torch.isfinite(u).all() and torch.isfinite(s).all() and torch.isfinite(vt).all()):
        raise ValueError(f"the SVD of {what} returned NaN or inf")
    return u, s, vt


def _split(u: torch.Tensor, s: torch.Tensor, vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # each singular pair (u_j, v_j) is defined up to a common sign, which differs between SVD routines
    # and even between calls of torch.linalg.svd on two copies of one matrix; fixing the largest entry
    # of u_j positive makes the factors a function of the matrix alone
    largest = u.abs().argmax(dim=0)
    signs = torch.where(u[largest, torch.arange(u.shape[1])] < 0, -1.0, 1.0).to(u.dtype)
    root = s.clamp_min(0.0).sqrt()
    return u * (signs * root), (signs * root)[:, None] * vt


def balanced_factors(
    matrix: torch.Tensor, rank: int, svd: SVDFunction | None = None, what: str = "the matrix"
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 factors ``left`` (m x rank) and ``right`` (rank x n) with ``left @ right`` the rank-``rank``
    truncated SVD of ``matrix``, the singular values split as their square roots into both."""
    u, s, vt = _call_svd(svd if svd is not None else _default_svd(), matrix, rank, what)
    return _split(u, s, vt)


# ---------------------------------------------------------------------------------- layer checks


def _layer_name(module: nn.Module, path: str | None) -> str:
    # one line: the repr of a module with children spans several
    summary = f"{type(module).__name__}({module.extra_repr()})"
    return f"layer {path!r} ({summary})" if path is not None else summary


def _check_finite(module: nn.Module, path: str | None) -> None:
    for name, param in module.named_parameters(recurse=False):
        if not torch.isfinite(param.detach()).all():
            raise ValueError(f"{_layer_name(module, path)} has NaN or inf in {name}: an SVD of it is meaningless")


def _lstm_suffixes(num_layers: int, bidirectional: bool) -> list[str]:
    directions = ("", "_reverse") if bidirectional else ("",)
    return [f"l{layer}{direction}" for layer in range(num_layers) for direction in directions]


def _lstm_shapes(input_size: int, hidden_size: int, num_layers: int, bidirectional: bool) -> dict:
    shapes = {}
    directions = ("", "_reverse") if bidirectional else ("",)
    for layer in range(num_layers):
        # layers after the first read the concatenated outputs of all directions
        layer_input = input_size if layer == 0 else hidden_size * len(directions)
        for direction in directions:
            shapes[f"weight_ih_l{layer}{direction}"] = (4 * hidden_size, layer_input)
            shapes[f"weight_hh_l{layer}{direction}"] = (4 * hidden_size, hidden_size)
    return shapes


def matrix_shapes(module: nn.Module) -> dict[str, tuple[int, int]] | None:
    """``{matrix name: (m, n)}`` of a layer this package can factorize, ``None`` for any other module.

    ``"weight"`` for ``nn.Linear`` (out x in) and ``nn.Conv2d`` with ``groups == 1``
    (C_out x C_in*kh*kw); the gate matrices for ``nn.LSTM`` without projections. Only these exact
    types: a subclass may use its weight in ways a replacement would not reproduce.
    """
    kind = type(module)
    if kind is nn.Linear:
        return {"weight": (module.out_features, module.in_features)}
    if kind is nn.Conv2d and module.groups == 1:
        kh, kw = module.kernel_size
        return {"weight": (module.out_channels, module.in_channels * kh * kw)}
    if kind is nn.LSTM and module.proj_size == 0:
        return _lstm_shapes(module.input_size, module.hidden_size, module.num_layers, module.bidirectional)
    return None


def _check_supported(module: nn.Module, path: str | None = None) -> dict[str, tuple[int, int]]:
    """The matrix shapes of ``module``, or a ValueError saying why it cannot be factorized."""
    if isinstance(module, (FactorizedLinear, FactorizedConv2d, FactorizedLSTM)):
        raise ValueError(f"{_layer_name(module, path)} is already factorized")
    shapes = matrix_shapes(module)
    if shapes is not None:
        return shapes
    name = _layer_name(module, path)
    kind = type(module)
    if kind is nn.Conv2d:
        depthwise = " (depthwise)" if module.groups == module.in_channels else ""
        raise ValueError(
            f"{name} is a grouped convolution{depthwise} with groups={module.groups}: its weight is {module.groups} "
            "separate matrices, not one C_out x (C_in*kh*kw) matrix, so it cannot be split into a kxk conv to r "
            "channels and a 1x1 conv; leave it dense"
        )
    if kind is nn.LSTM:
        raise ValueError(f"{name} has proj_size={module.proj_size}: LSTMs with projections are not supported")
    raise ValueError(
        f"{name} is a {kind.__module__}.{kind.__qualname__}; only torch.nn.Linear, torch.nn.Conv2d "
        "(groups=1) and torch.nn.LSTM (exactly these types, not subclasses) can be factorized"
    )


def _check_layer_rank(rank, m: int, n: int, what: str) -> int:
    if isinstance(rank, (bool, np.bool_)) or not isinstance(rank, Integral):
        raise TypeError(f"rank of {what} must be an int, got {type(rank).__name__}")
    return resolve_rank(int(rank), (m, n), what)


def _follow(original: nn.Module, replacement: nn.Module) -> nn.Module:
    replacement.train(original.training)
    return replacement


# ------------------------------------------------------------------------------------------ Linear


class FactorizedLinear(nn.Module):
    """``Linear(in_features -> rank, no bias)`` (``first``) then ``Linear(rank -> out_features, bias)``
    (``second``): the weight ``second.weight @ first.weight`` has rank at most ``rank``.

    Build it from a trained layer with :meth:`from_linear`; constructed directly, each factor has
    ``nn.Linear``'s default initialisation.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, *, device=None, dtype=None):
        super().__init__()
        self.rank = _check_layer_rank(rank, out_features, in_features, "FactorizedLinear")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank, *, svd: SVDFunction | None = None) -> FactorizedLinear:
        """The rank-``rank`` truncated SVD of ``linear.weight`` (``rank``: an int, or a float fraction of
        ``min(out, in)``), the bias kept; dtype, device, train mode and ``requires_grad`` follow ``linear``."""
        return cls._from_layer(linear, rank, svd, None)

    @classmethod
    def _from_layer(cls, linear, rank, svd, path, factors=None) -> FactorizedLinear:
        shape = _check_supported(linear, path)["weight"]
        what = _layer_name(linear, path)
        rank = resolve_rank(rank, shape, what)
        if factors is None:
            _check_finite(linear, path)
            factors = balanced_factors(linear.weight, rank, svd, what)
        left, right = factors
        weight = linear.weight
        layer = cls(
            linear.in_features,
            linear.out_features,
            rank,
            bias=linear.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            layer.first.weight.copy_(right)
            layer.second.weight.copy_(left)
            if linear.bias is not None:
                layer.second.bias.copy_(linear.bias)
                layer.second.bias.requires_grad_(linear.bias.requires_grad)
        layer.first.weight.requires_grad_(weight.requires_grad)
        layer.second.weight.requires_grad_(weight.requires_grad)
        return _follow(linear, layer)

    def weight_product(self) -> torch.Tensor:
        """The out x in matrix the two factors apply."""
        return self.second.weight @ self.first.weight

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` holding the product of the factors and the bias (for checks)."""
        weight = self.second.weight
        dense = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.second.bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.weight_product())
            if self.second.bias is not None:
                dense.bias.copy_(self.second.bias)
        return _follow(self, dense)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


# ------------------------------------------------------------------------------------------ Conv2d


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class FactorizedConv2d(nn.Module):
    """A kh x kw conv ``in_channels -> rank`` without bias (``first``: the original stride, padding,
    dilation and padding mode) then a 1x1 conv ``rank -> out_channels`` with the bias (``second``).

    The 1x1 conv mixes channels pixel by pixel, so all spatial behaviour (padding included, also
    ``padding="same"`` and the reflect/replicate/circular modes) stays in ``first`` and the pair computes
    exactly the conv whose weight is the product of the factors. Build it with :meth:`from_conv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        rank: int,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.rank = _check_layer_rank(rank, out_channels, in_channels * kh * kw, "FactorizedConv2d")
        self.first = nn.Conv2d(
            in_channels,
            rank,
            (kh, kw),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=1,
            bias=False,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.second = nn.Conv2d(rank, out_channels, 1, bias=bias, device=device, dtype=dtype)

    in_channels = property(lambda self: self.first.in_channels)
    out_channels = property(lambda self: self.second.out_channels)
    kernel_size = property(lambda self: self.first.kernel_size)
    stride = property(lambda self: self.first.stride)
    padding = property(lambda self: self.first.padding)
    dilation = property(lambda self: self.first.dilation)
    padding_mode = property(lambda self: self.first.padding_mode)
    groups = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, rank, *, svd: SVDFunction | None = None) -> FactorizedConv2d:
        """The rank-``rank`` truncated SVD of ``conv.weight`` reshaped to C_out x (C_in*kh*kw); grouped
        (and depthwise) convolutions are refused with a ValueError."""
        return cls._from_layer(conv, rank, svd, None)

    @classmethod
    def _from_layer(cls, conv, rank, svd, path, factors=None) -> FactorizedConv2d:
        shape = _check_supported(conv, path)["weight"]
        what = _layer_name(conv, path)
        rank = resolve_rank(rank, shape, what)
        weight = conv.weight
        if factors is None:
            _check_finite(conv, path)
            factors = balanced_factors(weight.reshape(shape), rank, svd, what)
        left, right = factors
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            rank,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            layer.first.weight.copy_(right.reshape(layer.first.weight.shape))
            layer.second.weight.copy_(left.reshape(layer.second.weight.shape))
            if conv.bias is not None:
                layer.second.bias.copy_(conv.bias)
                layer.second.bias.requires_grad_(conv.bias.requires_grad)
        layer.first.weight.requires_grad_(weight.requires_grad)
        layer.second.weight.requires_grad_(weight.requires_grad)
        return _follow(conv, layer)

    def weight_product(self) -> torch.Tensor:
        """The C_out x (C_in*kh*kw) matrix the two convs apply."""
        return self.second.weight.flatten(1) @ self.first.weight.flatten(1)

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` holding the product of the factors and the bias (for checks)."""
        weight = self.first.weight
        dense = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.second.bias is not None,
            padding_mode=self.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            dense.weight.copy_(self.weight_product().reshape(dense.weight.shape))
            if self.second.bias is not None:
                dense.bias.copy_(self.second.bias)
        return _follow(self, dense)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
            f"stride={self.stride}"
        )


# -------------------------------------------------------------------------------------------- LSTM


class UnknownLayerError(KeyError, ValueError):
    """A module path or matrix name that names nothing in the model or layer: a KeyError (a lookup by name
    failed) and a ValueError (a bad argument)."""

    def __str__(self) -> str:  # KeyError's own __str__ would print the message's repr
        return str(self.args[0]) if self.args else ""


def _close(name: str, names) -> str:
    close = difflib.get_close_matches(str(name), list(names), n=3, cutoff=0.6)
    return f" (close: {', '.join(map(repr, close))})" if close else ""


def _lstm_ranks(ranks, shapes: dict, what: str) -> dict[str, int | None]:
    """``{gate matrix name: rank or None (dense)}`` from one rank for all matrices, ``None``, or a dict
    by matrix name (matrices it leaves out stay dense)."""
    if ranks is None:
        return dict.fromkeys(shapes)
    if isinstance(ranks, Mapping):
        unknown = [key for key in ranks if key not in shapes]
        if unknown:
            key = unknown[0]
            raise UnknownLayerError(
                f"{what} has no matrix {key!r}{_close(key, shapes)}; its matrices are {list(shapes)}"
            )
        return {
            name: None if ranks.get(name) is None else resolve_rank(ranks[name], shape, f"{what}.{name}")
            for name, shape in shapes.items()
        }
    return {name: resolve_rank(ranks, shape, f"{what}.{name}") for name, shape in shapes.items()}


class FactorizedLSTM(nn.Module):
    """A drop-in for ``nn.LSTM`` (no ``proj_size``) with low-rank gate matrices.

    For every layer ``k`` and direction, the input matrix ``weight_ih_l{k}[_reverse]`` (4H x I) and the
    recurrent matrix ``weight_hh_l{k}[_reverse]`` (4H x H) are either a dense parameter of that name (rank
    ``None``) or two parameters ``<name>_u`` (4H x r) and ``<name>_v`` (r x n) with the matrix
    ``<name>_u @ <name>_v``. Biases are ``nn.LSTM``'s ``bias_ih_l{k}`` / ``bias_hh_l{k}``, so a state dict
    of an ``nn.LSTM`` loads into an all-dense one.

    ``forward(input, hx=None)`` takes and returns what ``nn.LSTM`` does: input ``(L, N, I)``, ``(N, L, I)``
    with ``batch_first``, unbatched ``(L, I)``, or a ``PackedSequence``; ``hx = (h_0, c_0)`` of shape
    ``(D*num_layers, N, H)`` (``(D*num_layers, H)`` unbatched); returns ``(output, (h_n, c_n))``. The
    recurrence is a loop over time steps in torch; each layer's input projection is computed for all
    steps at once. Dropout between layers is applied in training mode, as in ``nn.LSTM``.

    Build it from a trained layer with :meth:`from_lstm`; constructed directly, every parameter (factors
    included) is uniform in ``(-1/sqrt(H), 1/sqrt(H))`` as in ``nn.LSTM``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        ranks=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if proj_size:
            raise ValueError(
                f"FactorizedLSTM does not implement proj_size (got {proj_size}): LSTMs with "
                "projections are not supported"
            )
        for value, name in ((input_size, "input_size"), (hidden_size, "hidden_size"), (num_layers, "num_layers")):
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(dropout, Real) and 0.0 <= float(dropout) <= 1.0):
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = float(dropout)
        self.proj_size = 0
        self.shapes = _lstm_shapes(self.input_size, self.hidden_size, self.num_layers, self.bidirectional)
        self.ranks: dict[str, int | None] = _lstm_ranks(ranks, self.shapes, "FactorizedLSTM")
        factory = {"device": device, "dtype": dtype}
        for suffix in _lstm_suffixes(self.num_layers, self.bidirectional):
            for kind in ("ih", "hh"):
                name = f"weight_{kind}_{suffix}"
                (m, n), rank = self.shapes[name], self.ranks[name]
                if rank is None:
                    self.register_parameter(name, nn.Parameter(torch.empty(m, n, **factory)))
                else:
                    self.register_parameter(f"{name}_u", nn.Parameter(torch.empty(m, rank, **factory)))
                    self.register_parameter(f"{name}_v", nn.Parameter(torch.empty(rank, n, **factory)))
            if self.bias:
                for kind in ("ih", "hh"):
                    self.register_parameter(
                        f"bias_{kind}_{suffix}", nn.Parameter(torch.empty(4 * self.hidden_size, **factory))
                    )
        self.reset_parameters()

    @property
    def gate_matrices(self) -> list[str]:
        """The gate matrix names, in ``nn.LSTM``'s order."""
        return list(self.shapes)

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-bound, bound)

    def flatten_parameters(self) -> None:
        """No-op: kept so that code calling ``nn.LSTM.flatten_parameters`` runs unchanged."""

    # ---------------------------------------------------------------------------------- building

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, ranks, *, svd: SVDFunction | None = None) -> FactorizedLSTM:
        """Factorize the gate matrices of ``lstm``: ``ranks`` is one rank for all of them (an int, or a
        float fraction of each matrix's full rank), or ``{matrix name: rank or None}`` (left-out
        matrices stay dense). The biases are copied; dtype, device and train mode follow ``lstm``."""
        return cls._from_layer(lstm, ranks, svd, None)

    @classmethod
    def _from_layer(cls, lstm, ranks, svd, path, factors=None) -> FactorizedLSTM:
        shapes = _check_supported(lstm, path)
        what = _layer_name(lstm, path)
        ranks = _lstm_ranks(ranks, shapes, what)
        if factors is None:
            _check_finite(lstm, path)
            factors = {
                name: balanced_factors(getattr(lstm, name), rank, svd, f"{what}.{name}")
                for name, rank in ranks.items()
                if rank is not None
            }
        reference = lstm.weight_ih_l0
        layer = cls(
            lstm.input_size,
            lstm.hidden_size,
            lstm.num_layers,
            lstm.bias,
            lstm.batch_first,
            lstm.dropout,
            lstm.bidirectional,
            ranks=ranks,
            device=reference.device,
            dtype=reference.dtype,
        )
        with torch.no_grad():
            for name, param in lstm.named_parameters(recurse=False):
                if name in factors:
                    left, right = factors[name]
                    targets = ((getattr(layer, f"{name}_u"), left), (getattr(layer, f"{name}_v"), right))
                else:
                    targets = ((getattr(layer, name), param),)
                for target, value in targets:
                    target.copy_(value)
                    target.requires_grad_(param.requires_grad)
        return _follow(lstm, layer)

    def matrix(self, name: str) -> torch.Tensor:
        """The gate matrix ``name`` (dense, or the product of its factors)."""
        if name not in self.shapes:
            raise UnknownLayerError(f"FactorizedLSTM has no gate matrix {name!r}{_close(name, self.shapes)}")
        if self.ranks[name] is None:
            return getattr(self, name)
        return getattr(self, f"{name}_u") @ getattr(self, f"{name}_v")

    def to_lstm(self) -> nn.LSTM:
        """An ``nn.LSTM`` with the products of the factors (for checks)."""
        reference = next(self.parameters())
        lstm = nn.LSTM(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.batch_first,
            self.dropout,
            self.bidirectional,
            device=reference.device,
            dtype=reference.dtype,
        )
        with torch.no_grad():
            for name, param in lstm.named_parameters():
                param.copy_(self.matrix(name) if name in self.shapes else getattr(self, name))
        return _follow(self, lstm)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for flag, default in (("bias", True), ("batch_first", False), ("bidirectional", False)):
            if getattr(self, flag) != default:
                text += f", {flag}={getattr(self, flag)}"
        if self.dropout:
            text += f", dropout={self.dropout}"
        ranks = {name: rank for name, rank in self.ranks.items() if rank is not None}
        return f"{text}, ranks={ranks}"

    # ----------------------------------------------------------------------------------- forward

    def _apply_matrix(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``x @ W^T``, through the thin factors when ``W`` is factorized."""
        if self.ranks[name] is None:
            return F.linear(x, getattr(self, name))
        return F.linear(F.linear(x, getattr(self, f"{name}_v")), getattr(self, f"{name}_u"))

    def _run_direction(self, x, suffix: str, h, c, mask, reverse: bool):
        projected = self._apply_matrix(x, f"weight_ih_{suffix}")
        if self.bias:
            projected = projected + (getattr(self, f"bias_ih_{suffix}") + getattr(self, f"bias_hh_{suffix}"))
        recurrent = f"weight_hh_{suffix}"
        steps = x.shape[0]
        outputs = [None] * steps
        for t in range(steps - 1, -1, -1) if reverse else range(steps):
            gates = projected[t] + self._apply_matrix(h, recurrent)
            i, f, g, o = gates.chunk(4, dim=-1)
            c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h_next = torch.sigmoid(o) * torch.tanh(c_next)
            if mask is None:
                h, c = h_next, c_next
            else:
                # a packed sequence shorter than the batch's longest keeps its state outside its steps: its
                # final state is its last step's, and its reverse pass starts from h_0 at its last step
                h, c = torch.where(mask[t], h_next, h), torch.where(mask[t], c_next, c)
            outputs[t] = h_next
        return torch.stack(outputs), h, c

    def _check_state(self, state, name: str, expected: tuple) -> torch.Tensor:
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(state).__name__}")
        if tuple(state.shape) != expected:
            raise ValueError(
                f"{name} must have shape {expected} (num_layers * directions, batch, hidden_size), "
                f"got {tuple(state.shape)}"
            )
        return state

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input)  # (T, N, I), the batch in its original order
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input must be a tensor or a PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"input must be 2-D (unbatched) or 3-D, got shape {tuple(input.shape)}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, the LSTM expects input_size={self.input_size}")
        steps, batch = x.shape[0], x.shape[1]
        directions = 2 if self.bidirectional else 1
        state_shape = (directions * self.num_layers, batch, self.hidden_size)
        if hx is None:
            h0 = c0 = x.new_zeros(state_shape)
        else:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError("hx must be a pair (h_0, c_0)")
            h0, c0 = hx
            expected = state_shape if batched else (state_shape[0], state_shape[2])
            h0, c0 = self._check_state(h0, "h_0", expected), self._check_state(c0, "c_0", expected)
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        mask = None
        if lengths is not None:
            mask = (torch.arange(steps)[:, None] < lengths[None, :]).to(x.device)[:, :, None]

        layer_input, h_n, c_n = x, [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                suffix = f"l{layer}" + ("_reverse" if direction else "")
                out, h, c = self._run_direction(layer_input, suffix, h0[index], c0[index], mask, bool(direction))
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        output, h_n, c_n = layer_input, torch.stack(h_n), torch.stack(c_n)

        if packed:
            order = input.sorted_indices
            if order is not None:
                output = output.index_select(1, order)
                lengths = lengths[order.cpu()]
            repacked = pack_padded_sequence(output, lengths, enforce_sorted=True)
            return (
                PackedSequence(repacked.data, repacked.batch_sizes, input.sorted_indices, input.unsorted_indices),
                (h_n, c_n),
            )
        if not batched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)
