"""Top-1 accuracy of a classifier, the one measure that training, distillation and quantization report."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["top1_accuracy"]


def top1_accuracy(
    model: nn.Module | Callable, batches: Iterable, *, progress: bool = False, desc: str = "evaluating"
) -> float:
    """The fraction of samples whose largest logit is the label, over ``batches`` of ``(input, label)``.

    A torch module is evaluated in eval mode (batch norm on its running statistics, no dropout), and every
    submodule gets its own previous mode back afterwards, also when the evaluation raises; any other callable
    (``graph.run_float``) is called as it is. Runs without autograd. ``progress`` shows a progress bar named
    ``desc``. Raises ValueError when the batches hold no sample.
    """
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch", leave=False)
    # per submodule: a model may keep parts in eval mode while it trains (frozen batch norm, a teacher)
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    correct = total = 0
    try:
        if modes:
            model.eval()
        with torch.no_grad():
            for x, y in batches:
                correct += int((model(x).argmax(dim=1) == y).sum())
                total += int(y.numel())
    finally:
        for m, training in modes:
            m.training = training
    if total == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return correct / total
