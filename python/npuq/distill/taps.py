"""Taps: read the intermediate outputs of named modules of an unmodified model.

Distillation losses compare a student's and a teacher's tensors taken from inside the models (a
feature map after a block, an embedding before the classifier). :class:`FeatureTaps` records them with
forward hooks on the modules named by their dotted paths, the names of ``model.named_modules()``
(``"layer2.0"``, ``"features.3.conv.1"``), so any model -- torchvision's included -- can be tapped
without changing its code::

    with FeatureTaps(student, ["layer2", "layer3"]) as taps:
        logits = student(images)
        hint = taps["layer3"]           # the output of student.layer3, with its autograd graph

The recorded tensors keep their gradients: a loss on a student's tap backpropagates into the student.
Run the teacher under ``torch.no_grad()`` (or pass ``detach=True``) so that its taps hold no graph.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import torch
import torch.nn as nn

__all__ = ["FeatureTaps", "TapError", "get_module", "model_outputs"]

_LIST_ALL = "[n for n, _ in model.named_modules()]"


class TapError(KeyError, ValueError):
    """A module path that names no module of the model, or a tap with no output from the last forward
    pass. A KeyError (a lookup by name failed) and a ValueError (a bad argument)."""

    def __str__(self) -> str:  # KeyError's own __str__ would print the message's repr
        return str(self.args[0]) if self.args else ""


def _all_module_names(model: nn.Module) -> list[str]:
    # remove_duplicate=False: a module registered under two names is reachable (and tappable) by both
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The sub-module of ``model`` at the dotted ``path`` (a name of ``model.named_modules()``, e.g.
    ``"layer2.0"``, ``"features.3.conv.1"``; ``""`` is the model itself).

    Raises :class:`TapError` naming the closest existing paths when there is no such module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(path, str):
        raise TypeError(f"path must be a str (a dotted module name), got {type(path).__name__}")
    try:
        return model.get_submodule(path)
    except AttributeError:
        pass
    names = _all_module_names(model)
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.6)
    suggestion = f"; close names: {', '.join(map(repr, close))}" if close else ""
    raise TapError(f"{type(model).__name__} has no module {path!r}{suggestion}. List all module paths with {_LIST_ALL}")


def _first_tensor(output):
    """The tensor a module's output stands for: the output itself, or the first tensor (depth first) of a
    tuple / list / dict output (e.g. an LSTM's ``(output, (h, c))`` gives ``output``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class FeatureTaps:
    """Forward hooks that record the outputs of the modules at ``paths`` of ``model``.

    * ``taps[path]`` is the output of that module in the model's last forward pass; ``taps.outputs()``
      all of them, as a dict by path. A module returning a tuple, list or dict is recorded as the first
      tensor in it (depth first). A module called several times in one pass (a shared activation, such
      as the ``relu`` of torchvision's ResNet blocks) is recorded as its *last* call's output; ``calls``
      says how many calls there were -- tap a module that runs once (a block, a conv) instead.
    * Every forward pass of ``model`` starts a new record (a pre-hook on ``model`` clears the previous
      one); reading a tap whose module did not run in the last pass (a branch not taken) raises
      :class:`TapError`. Calling a sub-module directly does not start a new record.
    * The tensors keep their autograd graph (a student's loss backpropagates through them) unless
      ``detach=True``. They are held until the next pass, ``clear()`` or ``remove()``.
    * Works in train and eval mode. Use as a context manager (the hooks are removed on exit, the last
      record stays readable) or call ``remove()``.
    """

    def __init__(self, model: nn.Module, paths: str | Iterable[str], *, detach: bool = False):
        if isinstance(paths, str):
            paths = [paths]
        try:
            paths = list(paths)
        except TypeError:
            raise TypeError(f"paths must be a str or an iterable of str, got {type(paths).__name__}") from None
        if not paths:
            raise ValueError("paths is empty: give at least one module path")
        duplicates = sorted({p for p in paths if paths.count(p) > 1})
        if duplicates:
            raise ValueError(f"paths names {duplicates} more than once")
        self.model = model
        self.paths: tuple[str, ...] = tuple(paths)
        self.detach = bool(detach)
        modules = [get_module(model, path) for path in self.paths]  # all paths checked before any hook
        self._records: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles = [model.register_forward_pre_hook(self._start_pass)]
        for path, module in zip(self.paths, modules):
            self._handles.append(module.register_forward_hook(self._recorder(path)))

    # ----------------------------------------------------------------------------------------- hooks

    def _start_pass(self, module, args) -> None:
        self.clear()

    def _recorder(self, path: str):
        def record(module, args, output) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                raise TapError(
                    f"the module at {path!r} ({type(module).__name__}) returned {type(output).__name__}, "
                    f"which holds no tensor to record"
                )
            self._records[path] = tensor.detach() if self.detach else tensor
            self.calls[path] = self.calls.get(path, 0) + 1

        return record

    # ---------------------------------------------------------------------------------------- access

    def __getitem__(self, path: str) -> torch.Tensor:
        if path not in self.paths:
            close = difflib.get_close_matches(str(path), self.paths, n=3, cutoff=0.6)
            suggestion = f" (close: {', '.join(map(repr, close))})" if close else ""
            raise TapError(f"{path!r} is not tapped{suggestion}; the taps are {list(self.paths)}")
        if path not in self._records:
            raise TapError(
                f"the module at {path!r} did not run in the last forward pass of the model "
                f"(a branch not taken, a pass not run yet, or a record cleared)"
            )
        return self._records[path]

    def __contains__(self, path: str) -> bool:
        return path in self._records

    def outputs(self) -> dict[str, torch.Tensor]:
        """``{path: tensor}`` for every tapped path, in the order given; TapError if one did not run."""
        return {path: self[path] for path in self.paths}

    def clear(self) -> None:
        """Forget the recorded tensors (and the graphs they hold)."""
        self._records.clear()
        self.calls.clear()

    # ------------------------------------------------------------------------------------- lifetime

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def remove(self) -> None:
        """Remove the hooks (idempotent); the last record stays readable until ``clear()``."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"FeatureTaps({type(self.model).__name__}, paths={list(self.paths)}, {state})"


def model_outputs(model: nn.Module, x, paths: str | Iterable[str], *, detach: bool = False):
    """Run ``model(x)`` once with taps on ``paths``; return ``(output, {path: tensor})``.

    The hooks are removed afterwards. Under ``torch.no_grad()`` (a frozen teacher) the tensors carry no
    graph; otherwise they keep it, as the model's output does.
    """
    with FeatureTaps(model, paths, detach=detach) as taps:
        output = model(x)
        return output, taps.outputs()
