"""The one top-1 accuracy helper and the three names that call it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from npuq.apps.training import evaluate as training_evaluate
from npuq.distill.trainer import accuracy as distill_accuracy
from npuq.evaluation import top1_accuracy
from npuq.quant.api import evaluate as quant_evaluate


class _ModeProbe(nn.Module):
    """Logits that say which mode it ran in: class 0 in eval mode, class 1 in training mode."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.BatchNorm1d(2)
        self.seen: list[bool] = []
        self.grad: list[bool] = []
        self.fail = False

    def forward(self, x):
        if self.fail:
            raise RuntimeError("broken batch")
        self.seen.append(self.training)
        self.grad.append(torch.is_grad_enabled())
        logits = torch.zeros(x.shape[0], 2)
        logits[:, int(self.training)] = 1.0
        return logits


def _batches(n: int = 10, size: int = 4):
    labels = torch.zeros(n, dtype=torch.long)
    labels[::2] = 1
    return [(torch.zeros(len(labels[i : i + size]), 3), labels[i : i + size]) for i in range(0, n, size)]


def test_evaluates_in_eval_mode_and_restores_every_submodule():
    model = _ModeProbe().train()
    model.frozen.eval()  # a part kept in eval mode while the rest trains
    assert top1_accuracy(model, _batches()) == 0.5
    assert model.seen == [False] * 3
    assert model.training and not model.frozen.training
    assert model.grad == [False] * 3 and torch.is_grad_enabled()


def test_the_mode_comes_back_when_the_model_raises():
    model = _ModeProbe().train()
    model.fail = True
    with pytest.raises(RuntimeError, match="broken batch"):
        top1_accuracy(model, _batches())
    assert model.training


def test_callables_and_empty_loaders():
    assert top1_accuracy(lambda x: torch.tensor([[0.0, 1.0]]).expand(x.shape[0], 2), _batches()) == 0.5
    with pytest.raises(ValueError, match="no samples"):
        top1_accuracy(_ModeProbe(), [])


def test_the_three_helpers_agree():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3)).train()
    images, labels = torch.randn(50, 3), torch.randint(0, 3, (50,))
    loader = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, 50, 16)]
    expected = top1_accuracy(model, loader)
    assert training_evaluate(model, loader) == quant_evaluate(model, loader) == expected
    assert distill_accuracy(model, images, labels, batch_size=16) == expected
    assert model.training


def test_logits_for_fidelity_are_collected_in_eval_mode_and_modes_come_back():
    from npuq.fidelity import collect_logits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    model[2].eval()  # a part kept in eval mode while the rest trains keeps its own mode
    x = torch.randn(10, 4)
    logits = collect_logits(model, x, batch_size=3)
    assert model.training and model[0].training and not model[2].training
    with torch.no_grad():
        expected = model.eval()(x)
    # dropout was off: the logits are the eval-mode function (up to the float rounding of other batch sizes)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    assert not logits.requires_grad
