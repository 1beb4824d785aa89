"""What a factorization saves: per layer matrix and for the whole model.

:func:`compression_report` reads a model as it is -- all dense, partly or fully factorized -- and gives
for every factorizable or factorized layer matrix its shape m x n, rank, break-even rank and parameters
before (``m*n + bias``) and after (``rank*(m+n) + bias`` when factorized), plus totals. The "before"
of a factorized layer is computed from its factors' shapes, so the report of a factorized model needs
no access to the original.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch.nn as nn

from npuq.lrf.factorize import _named_layers
from npuq.lrf.layers import FactorizedConv2d, FactorizedLinear, FactorizedLSTM, break_even_rank, matrix_shapes

__all__ = ["CompressionReport", "LayerCompression", "compression_report"]


@dataclass(frozen=True)
class LayerCompression:
    """One layer matrix: ``kind`` is the layer's type (``"Linear"``, ``"Conv2d"``, ``"LSTM"``), ``matrix``
    ``"weight"`` or an LSTM gate matrix name, ``rank`` ``None`` when dense. ``bias`` is the number of bias
    values counted with this matrix (an LSTM's ``bias_ih`` goes with ``weight_ih``, ``bias_hh`` with
    ``weight_hh``)."""

    path: str
    matrix: str
    kind: str
    shape: tuple[int, int]
    rank: int | None
    break_even: float
    bias: int
    params_before: int
    params_after: int

    @property
    def factorized(self) -> bool:
        return self.rank is not None

    @property
    def full_rank(self) -> int:
        return min(self.shape)


@dataclass(frozen=True)
class CompressionReport:
    """Per-matrix rows and totals. ``model_params_after`` is the model's parameter count as it is,
    ``model_params_before`` the count with every factorized layer dense again; ``layer_params_*`` are the
    same restricted to the rows. Ratios are before / after (above 1: smaller)."""

    layers: tuple[LayerCompression, ...]
    model_params_before: int
    model_params_after: int
    layer_params_before: int
    layer_params_after: int

    @property
    def model_ratio(self) -> float:
        return self.model_params_before / self.model_params_after if self.model_params_after else float("nan")

    @property
    def layer_ratio(self) -> float:
        return self.layer_params_before / self.layer_params_after if self.layer_params_after else float("nan")

    @property
    def factorized(self) -> list[LayerCompression]:
        return [row for row in self.layers if row.factorized]

    def to_dict(self) -> dict:
        layers = []
        for row in self.layers:
            entry = asdict(row)
            entry["shape"] = list(row.shape)
            entry["factorized"] = row.factorized
            layers.append(entry)
        return {
            "layers": layers,
            "model_params_before": self.model_params_before,
            "model_params_after": self.model_params_after,
            "model_ratio": self.model_ratio,
            "layer_params_before": self.layer_params_before,
            "layer_params_after": self.layer_params_after,
            "layer_ratio": self.layer_ratio,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_markdown(self) -> str:
        lines = [
            "| layer | matrix | type | m x n | rank | break-even | params before | params after |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for row in self.layers:
            rank = str(row.rank) if row.factorized else "dense"
            lines.append(
                f"| `{row.path or '(model)'}` | {row.matrix} | {row.kind} | {row.shape[0]} x {row.shape[1]} "
                f"| {rank} | {row.break_even:.1f} | {row.params_before:,} | {row.params_after:,} |"
            )
        lines += [
            "",
            f"Factorizable layers: {self.layer_params_before:,} -> {self.layer_params_after:,} parameters "
            f"({self.layer_ratio:.2f}x).",
            f"Model: {self.model_params_before:,} -> {self.model_params_after:,} parameters ({self.model_ratio:.2f}x).",
        ]
        return "\n".join(lines)


def _row(path, matrix, kind, shape, rank, bias) -> LayerCompression:
    m, n = shape
    after = (rank * (m + n) if rank is not None else m * n) + bias
    return LayerCompression(path, matrix, kind, (m, n), rank, break_even_rank(m, n), bias, m * n + bias, after)


def _rows(path: str, module: nn.Module) -> list[LayerCompression]:
    if isinstance(module, FactorizedLinear):
        bias = module.out_features if module.second.bias is not None else 0
        return [_row(path, "weight", "Linear", (module.out_features, module.in_features), module.rank, bias)]
    if isinstance(module, FactorizedConv2d):
        kh, kw = module.kernel_size
        bias = module.out_channels if module.second.bias is not None else 0
        shape = (module.out_channels, module.in_channels * kh * kw)
        return [_row(path, "weight", "Conv2d", shape, module.rank, bias)]
    if isinstance(module, FactorizedLSTM):
        bias = 4 * module.hidden_size if module.bias else 0
        return [_row(path, name, "LSTM", shape, module.ranks[name], bias) for name, shape in module.shapes.items()]
    shapes = matrix_shapes(module)
    if shapes is None:
        return []
    kind = type(module).__name__
    if kind == "LSTM":
        bias = 4 * module.hidden_size if module.bias else 0
    else:
        bias = 0 if module.bias is None else module.bias.numel()
    return [_row(path, name, kind, shape, None, bias) for name, shape in shapes.items()]


def compression_report(model: nn.Module) -> CompressionReport:
    """The parameter counts of ``model``'s factorizable and factorized layers and of the whole model
    (each parameter counted once, also when shared; buffers are not parameters)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rows = []
    for path, module in _named_layers(model):
        rows += _rows(path, module)
    model_after = sum(p.numel() for p in model.parameters())
    layer_before = sum(row.params_before for row in rows)
    layer_after = sum(row.params_after for row in rows)
    return CompressionReport(
        tuple(rows), model_after - layer_after + layer_before, model_after, layer_before, layer_after
    )
