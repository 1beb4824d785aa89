"""Import ``torchvision.models`` beside the CPU build of torch, in tests: :func:`npuq.models.zoo.torchvision_models`
(which explains the workaround), skipping the calling test when torchvision is not installed.

Usage in a test module::

    from support.torchvision_compat import torchvision_models
    models = torchvision_models()      # skips the test if torchvision is not installed
"""

from __future__ import annotations

import pytest

from npuq.models import zoo


def torchvision_models():
    """Return the ``torchvision.models`` module; skip the calling test if torchvision is not installed."""
    try:
        return zoo.torchvision_models()
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
        pytest.skip("torchvision is not installed (pip install --no-deps torchvision==0.28.0)")
