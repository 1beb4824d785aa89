"""Import ``torchvision.models`` beside the CPU build of torch.

The torchvision wheel on PyPI is built against the CUDA build of torch. Next to the CPU build its C++
ops library (``torchvision/_C.so``) fails to load, and ``import torchvision`` then dies with
``RuntimeError: operator torchvision::nms does not exist``: ``torchvision/_meta_registrations.py``
unconditionally registers fake (meta) kernels for ``torchvision::nms`` and ``torchvision::qnms``, which
needs those operator schemas to exist. The model architectures used by the tests are pure Python and
never call these ops, so defining the two schemas (with no kernels) is enough to import torchvision.

Usage in a test module::

    from support.torchvision_compat import torchvision_models
    models = torchvision_models()      # skips the test if torchvision is not installed
"""

from __future__ import annotations

import sys

import pytest
import torch

# The Library object owns the schema registrations: if it were garbage collected, the definitions
# would be removed again, so it lives at module level for the whole test session.
_SCHEMA_LIBRARY: torch.library.Library | None = None

_MISSING_OP = "operator torchvision::nms does not exist"


def _define_missing_schemas() -> None:
    global _SCHEMA_LIBRARY
    if _SCHEMA_LIBRARY is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SCHEMA_LIBRARY = lib


def _forget_partial_import() -> None:
    # a failed import leaves half-initialised torchvision modules behind; drop them before retrying
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def torchvision_models():
    """Return the ``torchvision.models`` module; skip the calling test if torchvision is not installed."""
    try:
        import torchvision
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
        pytest.skip("torchvision is not installed (pip install --no-deps torchvision==0.28.0)")
    except RuntimeError as exc:
        if _MISSING_OP not in str(exc):
            raise
        _forget_partial_import()
        _define_missing_schemas()
        import torchvision  # noqa: F401
    from torchvision import models

    return models
