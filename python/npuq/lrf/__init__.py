"""Low-rank factorization: weight matrices replaced by products of two thin factors from a truncated SVD.

* :mod:`~npuq.lrf.layers`: :class:`FactorizedLinear`, :class:`FactorizedConv2d`, :class:`FactorizedLSTM`;
* :mod:`~npuq.lrf.factorize`: :func:`factorize` (layers chosen by module path and rank),
  :func:`factorizable_layers`, :func:`factorized_ranks`, :class:`SVDCache` (one full SVD per layer for a
  rank search);
* :mod:`~npuq.lrf.report`: :func:`compression_report` (parameters before and after, per layer and in total);
* ``truncated_svd``: the native truncated SVD of ``npuq.lrf.svd``, imported on first access.

See ``docs/lrf.md``.
"""

# The factorized layers need torch; the native truncated SVD (npuq.lrf.svd) does not, and must import on a
# machine without torch. The torch-side names are bound eagerly when torch is there: a lazy binding would
# lose to the submodule attribute that any `import npuq.lrf.factorize` sets under the function's name.
_TORCH_EXPORTS = {
    "KeptDenseWarning": "npuq.lrf.factorize",
    "SVDCache": "npuq.lrf.factorize",
    "factorizable_layers": "npuq.lrf.factorize",
    "factorize": "npuq.lrf.factorize",
    "factorized_ranks": "npuq.lrf.factorize",
    "FactorizedConv2d": "npuq.lrf.layers",
    "FactorizedLinear": "npuq.lrf.layers",
    "FactorizedLSTM": "npuq.lrf.layers",
    "UnknownLayerError": "npuq.lrf.layers",
    "break_even_rank": "npuq.lrf.layers",
    "CompressionReport": "npuq.lrf.report",
    "LayerCompression": "npuq.lrf.report",
    "compression_report": "npuq.lrf.report",
}
_SVD_EXPORTS = {"TruncatedSVD": "npuq.lrf.svd", "truncated_svd": "npuq.lrf.svd"}

__all__ = sorted({**_TORCH_EXPORTS, **_SVD_EXPORTS})

try:
    import torch as _torch  # noqa: F401
except ImportError:  # pragma: no cover - torch is in every extra but the bare install
    _torch = None
else:
    from npuq.lrf.factorize import KeptDenseWarning, SVDCache, factorizable_layers, factorize, factorized_ranks
    from npuq.lrf.layers import (
        FactorizedConv2d,
        FactorizedLinear,
        FactorizedLSTM,
        UnknownLayerError,
        break_even_rank,
    )
    from npuq.lrf.report import CompressionReport, LayerCompression, compression_report


def __getattr__(name):
    # the SVD on first use (its module loads OpenBLAS); the torch-side names only reach here without torch
    if name in _SVD_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_SVD_EXPORTS[name]), name)
    if name in _TORCH_EXPORTS:
        raise ImportError(f"npuq.lrf.{name} needs torch (pip install 'npuq[torch]')")
    raise AttributeError(f"module 'npuq.lrf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
