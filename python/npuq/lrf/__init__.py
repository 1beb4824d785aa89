"""Low-rank factorization: weight matrices replaced by products of two thin factors from a truncated SVD.

* :mod:`~npuq.lrf.layers`: :class:`FactorizedLinear`, :class:`FactorizedConv2d`, :class:`FactorizedLSTM`;
* :mod:`~npuq.lrf.factorize`: :func:`factorize` (layers chosen by module path and rank),
  :func:`factorizable_layers`, :func:`factorized_ranks`, :class:`SVDCache` (one full SVD per layer for a
  rank search);
* :mod:`~npuq.lrf.report`: :func:`compression_report` (parameters before and after, per layer and in total);
* ``truncated_svd``: the native truncated SVD of ``npuq.lrf.svd``, imported on first access.

See ``docs/lrf.md``.
"""

# Names are imported on first access: the factorized layers need torch, the native truncated SVD
# (npuq.lrf.svd) does not, and importing one must not pull in the other.
_EXPORTS = {
    "KeptDenseWarning": "npuq.lrf.factorize", "SVDCache": "npuq.lrf.factorize",
    "factorizable_layers": "npuq.lrf.factorize", "factorize": "npuq.lrf.factorize",
    "factorized_ranks": "npuq.lrf.factorize",
    "FactorizedConv2d": "npuq.lrf.layers", "FactorizedLinear": "npuq.lrf.layers", "FactorizedLSTM": "npuq.lrf.layers",
    "UnknownLayerError": "npuq.lrf.layers", "break_even_rank": "npuq.lrf.layers",
    "CompressionReport": "npuq.lrf.report", "LayerCompression": "npuq.lrf.report",
    "compression_report": "npuq.lrf.report",
    "TruncatedSVD": "npuq.lrf.svd", "truncated_svd": "npuq.lrf.svd",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'npuq.lrf' has no attribute {name!r}")
    import importlib

    imported = importlib.import_module(module)
    # bind every name of that module now: importing npuq.lrf.factorize sets a package attribute of the
    # same name as the function, which must not stay visible as the module
    for other, where in _EXPORTS.items():
        if where == module and hasattr(imported, other):
            globals()[other] = getattr(imported, other)
    return getattr(imported, name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
