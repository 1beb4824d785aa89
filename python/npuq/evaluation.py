"""Evaluating a model: the mode it runs in, and top-1 accuracy, the one measure that training, distillation
and quantization report."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

__all__ = ["evaluation_mode", "top1_accuracy"]


@contextlib.contextmanager
def evaluation_mode(model: nn.Module | Callable) -> Iterator[None]:
    """Run ``model`` for evaluation inside the block: a torch module in eval mode (batch norm on its running
    statistics, no dropout), with every submodule's own previous mode restored afterwards, also when the
    block raises; any other callable (``graph.run_float``) as it is. Autograd is off."""
    # per submodule: a model may keep parts in eval mode while it trains (frozen batch norm, a teacher)
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    try:
        if modes:
            model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def top1_accuracy(
    model: nn.Module | Callable, batches: Iterable, *, progress: bool = False, desc: str = "evaluating"
) -> float:
    """The fraction of samples whose largest logit is the label, over ``batches`` of ``(input, label)``.

    The model runs in :func:`evaluation_mode`. ``progress`` shows a progress bar named ``desc``. Raises
    ValueError when the batches hold no sample.
    """
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch", leave=False)
    correct = total = 0
    with evaluation_mode(model):
        for x, y in batches:
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += int(y.numel())
    if total == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return correct / total
