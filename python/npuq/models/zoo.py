"""The common vision model zoo: torchvision's architectures with random weights, for checking that npuq
compiles and emulates the networks people deploy (``tests/npu/test_zoo.py``, ``benchmarks/bench_zoo.py``).

No weights are downloaded: the models are torchvision's architectures with their random initialisation,
and :func:`randomize_batch_norms` gives them non-trivial batch-norm statistics, so that folding and
every op's arithmetic are exercised as a trained network would exercise them.

torchvision is optional (``pip install --no-deps torchvision==0.28.0``, the tests' extra). Its PyPI wheel
is built against the CUDA build of torch: next to the CPU build its C++ ops library fails to load, and
``import torchvision`` dies in its fake-kernel registrations for ``torchvision::nms`` / ``qnms``
(``RuntimeError: operator torchvision::nms does not exist``). The architectures are pure Python and never
call these ops, so :func:`torchvision_models` defines the two operator schemas (without kernels) and
imports again.
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

#: the zoo, smallest first: name -> what it exercises
ZOO = {
    "squeezenet1_1": "concat (fire modules), ceil-mode max pooling",
    "shufflenet_v2_x0_5": "channel split, concat, channel shuffle",
    "mobilenet_v3_small": "hardswish / hardsigmoid tables, squeeze-excitation multiply",
    "mobilenet_v3_large": "hardswish / hardsigmoid tables, squeeze-excitation multiply",
    "efficientnet_b0": "SiLU / sigmoid tables, squeeze-excitation multiply, stochastic depth (identity)",
    "resnet50": "residual adds, max pooling",
    "densenet121": "concat of growing feature maps, stand-alone batch norms (depthwise 1x1)",
}

_MISSING_OP = "operator torchvision::nms does not exist"
# The Library object owns the schema definitions: garbage-collected, they would be removed again.
_SCHEMA_LIBRARY: torch.library.Library | None = None


def _define_missing_schemas() -> None:
    global _SCHEMA_LIBRARY
    if _SCHEMA_LIBRARY is None:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _SCHEMA_LIBRARY = lib


def torchvision_models():
    """``torchvision.models``, importable beside the CPU build of torch. Raises ModuleNotFoundError when
    torchvision is not installed."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if _MISSING_OP not in str(exc):
            raise
        # a failed import leaves half-initialised torchvision modules behind: drop them, then retry
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _define_missing_schemas()
        import torchvision  # noqa: F401
    from torchvision import models

    return models


def randomize_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters (some negative gammas), in place, so that
    folding matters and deep random networks do not collapse towards the identity-BN initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                if m.affine:
                    sign = torch.where(torch.rand(c, generator=gen) < 0.2, -1.0, 1.0)
                    m.weight.copy_(sign * (0.6 + 0.8 * torch.rand(c, generator=gen)))
                    m.bias.copy_(0.3 * torch.randn(c, generator=gen))
    return model


def zoo_model(name: str, seed: int = 3) -> nn.Module:
    """The zoo's ``name`` (a key of :data:`ZOO`) with random weights (``seed``) and randomized batch-norm
    statistics, in evaluation mode."""
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; the zoo has {', '.join(ZOO)}")
    torch.manual_seed(seed)
    return randomize_batch_norms(getattr(torchvision_models(), name)(weights=None), seed).eval()


__all__ = ["ZOO", "randomize_batch_norms", "torchvision_models", "zoo_model"]
