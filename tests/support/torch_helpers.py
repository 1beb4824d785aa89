"""torch-side helpers shared by the tests (test code only)."""

from __future__ import annotations

import torch
import torch.nn as nn


def randomize_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters (some negative gammas), so that folding
    matters and deep random networks do not collapse towards the identity-BN initialisation."""
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
