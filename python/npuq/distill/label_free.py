"""Label-free quantization-aware distillation: fine-tune a fake-quantized student against its FP32 self.

When no labelled data exist (an ImageNet model on a machine without ImageNet), the float model is the
only training signal. :func:`label_free_qat` wraps a prepared :class:`~npuq.quant.graph.Graph` in a
:class:`~npuq.quant.qat.FakeQuantModel` (weights through the NPU's weight quantizer, straight-through
gradients, float activations) and fits it to the teacher on unlabelled inputs:

* response knowledge: :class:`~npuq.distill.losses.KDLoss`, the KL divergence of the temperature-softened
  softmax outputs, scaled by ``T^2``;
* optionally feature hints: :class:`~npuq.distill.losses.HintLoss` (mean squared error, with a learned
  1x1 adapter only where channel counts differ) between named nodes of the student graph and the
  teacher's matching tensors.

The returned graph holds the trained float weights and biases; :func:`npuq.quantize` then quantizes it
for real (activation calibration, integer arithmetic), exactly like the graph it started from::

    graph = npuq.prepare(fp32_model, example)
    trained = label_free_qat(fp32_model, graph, lambda epoch: crops(seed=epoch), bits=4, epochs=2)
    qmodel = npuq.quantize(trained, calib, weights="wess", bits=4, activations="mse")

Training is deterministic for a seed (the data order is drawn from a generator seeded by ``(seed,
epoch)``; no global random state is read or changed). The teacher only runs forward, under
``torch.no_grad()`` in eval mode; its parameters, buffers and ``requires_grad`` flags are left as they
were. Batches are moved to the channels-last memory layout, with which the CPU's depthwise convolution
backward pass runs many times faster than in the default layout.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn as nn

from npuq.distill.losses import HintLoss, KDLoss
from npuq.distill.objective import LOGITS, Term
from npuq.distill.taps import FeatureTaps
from npuq.distill.trainer import OPTIMIZERS, OptimConfig
from npuq.methods import DATA_AWARE_WEIGHT_METHODS, WEIGHT_METHODS
from npuq.quant.graph import Graph, run_float_node
from npuq.quant.qat import FakeQuantModel

#: weight methods a fake-quantized student can train with (the data-aware ones need calibration statistics)
QAT_METHODS = tuple(m for m in WEIGHT_METHODS if m not in DATA_AWARE_WEIGHT_METHODS)

Data = torch.Tensor | Callable[[int], torch.Tensor]


class _TappedStudent(FakeQuantModel):
    """The fake-quantized graph, also recording the outputs of the nodes named in ``record`` (with their
    autograd graph) in ``self.recorded`` after every forward pass."""

    def __init__(self, graph: Graph, *, bits: int, method: str, shift_bits: int, record: Sequence[str] = ()):
        super().__init__(graph, bits=bits, method=method, shift_bits=shift_bits)
        self.record = tuple(record)
        self.recorded: dict[str, torch.Tensor] = {}
        self._index = {name: i for i, name in enumerate(self.names)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {}
        for node in self.graph:
            if node.is_layer:
                i = self._index[node.name]
                env[node.name] = run_float_node(self.graph, node, env, x, self.quantized_weight(i), self.biases[i])
            else:
                env[node.name] = run_float_node(self.graph, node, env, x)
        self.recorded = {name: env[name] for name in self.record}
        return env[self.graph.output_name]


class _GraphTeacher:
    """A prepared graph run in float as a teacher: logits, and the outputs of named nodes."""

    def __init__(self, graph: Graph, record: Sequence[str] = ()):
        self.graph, self.record = graph, tuple(record)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.graph.check_input(x)
        env: dict[str, torch.Tensor] = {}
        for node in self.graph:
            env[node.name] = run_float_node(self.graph, node, env, x)
        return env[self.graph.output_name], {name: env[name] for name in self.record}


class _ModuleTeacher:
    """A torch module as a teacher, its tensors read with forward hooks on module paths. Runs in eval mode
    (its previous mode is restored by :meth:`close`), never records gradients."""

    def __init__(self, model: nn.Module, record: Sequence[str] = ()):
        self.model = model
        self.was_training = model.training
        self.taps = FeatureTaps(model, list(record), detach=True) if record else None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.model.eval()
        logits = self.model(x)
        return logits, (self.taps.outputs() if self.taps is not None else {})

    def close(self) -> None:
        if self.taps is not None:
            self.taps.remove()
        self.model.train(self.was_training)


# ------------------------------------------------------------------------------------------ checks


def _int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}, got {value}")
    return value


def _real(value, name: str, *, zero_ok: bool) -> float:
    """A finite real number, > 0 (or >= 0 with ``zero_ok``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name} must be a finite number {'>=' if zero_ok else '>'} 0, got {value}")
    return value


def check_inputs(images, graph: Graph, batch_size: int, what: str = "the training inputs") -> torch.Tensor:
    """``images`` as the student takes them: a finite float tensor (N, *graph.input_shape) with at least
    one full batch. Raises ValueError (TypeError for a non-tensor) naming what is wrong."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"{what} must be a torch tensor (N, {', '.join(map(str, graph.input_shape))}), got {type(images).__name__}"
        )
    if not images.is_floating_point():
        raise ValueError(f"{what} must be floating point (the model's input scale), got {images.dtype}")
    if images.dim() == 0 or images.shape[0] == 0:
        raise ValueError(f"{what} are empty (shape {tuple(images.shape)}): give at least one batch of inputs")
    if tuple(images.shape[1:]) != tuple(graph.input_shape):
        raise ValueError(
            f"{what} have shape {tuple(images.shape)}, but {graph.model_name or 'the graph'} was "
            f"prepared for inputs of shape (N, {', '.join(map(str, graph.input_shape))})"
        )
    if images.shape[0] < batch_size:
        raise ValueError(
            f"{what} hold {images.shape[0]} inputs, fewer than one batch of {batch_size}: give more "
            f"inputs or a smaller batch_size"
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} contain NaN or infinity")
    return images


def _hint_pairs(hint_taps, graph: Graph, teacher) -> list[tuple[str, str]]:
    """``[(student node, teacher tap), ...]`` from a mapping, or from a list of node names when the
    teacher is a graph with the same node names."""
    if hint_taps is None:
        return []
    if isinstance(hint_taps, str):
        hint_taps = [hint_taps]
    if isinstance(hint_taps, Mapping):
        pairs = [(s, t) for s, t in hint_taps.items()]
    elif isinstance(hint_taps, Sequence):
        if not isinstance(teacher, Graph):
            raise ValueError(
                "hint_taps as a list of node names needs a teacher Graph with the same nodes; for a torch "
                "module teacher give a mapping {student node name: teacher module path}, e.g. "
                "{'add_3': 'blocks.7'}"
            )
        pairs = [(s, s) for s in hint_taps]
    else:
        raise TypeError(
            f"hint_taps must be None, a list of node names or a mapping {{node name: teacher tap}}, "
            f"got {type(hint_taps).__name__}"
        )
    if not pairs:
        raise ValueError("hint_taps is empty: give None for response distillation only")
    for s, t in pairs:
        if not isinstance(s, str) or not isinstance(t, str):
            raise TypeError(f"hint taps are names (str), got {s!r} -> {t!r}")
        for name, where in ((s, graph), (t, teacher if isinstance(teacher, Graph) else None)):
            if where is None:
                continue  # a module path: FeatureTaps checks it, naming close paths
            known = [n.name for n in where]
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
                raise ValueError(
                    f"hint tap {name!r} is not a node of {where.model_name or 'the graph'}"
                    f"{' (close: ' + ', '.join(close) + ')' if close else ''}; the node names are "
                    f"those of graph.summary()"
                )
        if graph[s].kind in ("input", "output"):
            raise ValueError(f"hint tap {s!r} is the graph's {graph[s].kind}; tap an inner node")
    if len({s for s, _ in pairs}) != len(pairs):
        raise ValueError(f"hint_taps names a student node more than once: {[s for s, _ in pairs]}")
    return pairs


# ------------------------------------------------------------------------------------------ training


def label_free_qat(
    teacher: nn.Module | Graph,
    student_graph: Graph,
    data: Data,
    *,
    bits: int,
    method: str = "wess",
    shift_bits: int = 4,
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 16,
    temperature: float = 1.0,
    hint_taps=None,
    hint_weight: float = 1.0,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    seed: int = 0,
    progress: bool = True,
    history: list | None = None,
) -> Graph:
    """Quantization-aware distillation without labels; returns the trained (float) graph.

    Args:
        teacher: the FP32 model, a torch module (e.g. the model ``student_graph`` was prepared from) or a
            prepared :class:`Graph` run in float. Only run forward, without gradients, in eval mode.
        student_graph: the prepared graph to fine-tune (not modified), all of its ops NPU ops.
        data: the unlabelled inputs, as the models take them (already normalized): a float tensor
            ``(N, *student_graph.input_shape)`` reshuffled every epoch, or a callable ``epoch -> tensor``
            giving each epoch's inputs (fresh crops per epoch). Every epoch runs ``N // batch_size``
            steps (the last partial batch is dropped).
        bits: weight bits of the student, 2..8 (activations stay float here; :func:`npuq.quantize` sets
            them to int8 afterwards).
        method: the weight quantizer, one of :data:`QAT_METHODS` (``"wess"``: one scale per layer and a
            ``shift_bits``-bit power-of-two shift per output channel).
        epochs, lr, batch_size, optimizer (``"adam"``, ``"adamw"`` or ``"sgd"`` with momentum 0.9),
            weight_decay, warmup_steps: the schedule; the learning rate rises linearly from 0 over the first
            ``warmup_steps`` steps (Adam's first steps move every weight by about ``lr`` whatever its
            gradient, which a warm-up tempers), then follows a cosine from ``lr`` to 0 over all steps.
        temperature: of the softened softmax in the KD loss (which is scaled by ``T^2``).
        hint_taps: ``None`` (logits only), or feature hints: a mapping ``{student node name: teacher tap}``
            where the teacher tap is a module path of a torch teacher (``"blocks.7"``) or a node name of
            a graph teacher; a list of node names when the teacher is a graph with the same names.
            Node names are those of ``student_graph.summary()`` (e.g. ``"add_3"``, ``"head_1"``).
        hint_weight: the weight of each hint's mean squared error next to the KD term (weight 1).
        seed: the data order (and the initialization of any hint adapter) follow from it.
        progress: a tqdm bar per epoch with the running loss.
        history: when a list is given, one dict per step is appended (``epoch``, ``step``, ``lr``,
            ``loss``, ``kd`` and each hint's value) and one per epoch (``epoch``, ``seconds``, means).

    Returns:
        A copy of ``student_graph`` with the trained weights and biases (a note in ``graph.notes`` says
        how it was trained), ready for :func:`npuq.quantize`.
    """
    if not isinstance(student_graph, Graph):
        raise TypeError(
            f"student_graph must be a prepared npuq Graph (npuq.prepare(model, example_input)), got "
            f"{type(student_graph).__name__}"
        )
    if not isinstance(teacher, (nn.Module, Graph)):
        raise TypeError(f"teacher must be a torch.nn.Module or a prepared npuq Graph, got {type(teacher).__name__}")
    bits = _int(bits, "bits", 2, 8)
    if method not in QAT_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(QAT_METHODS)} (the data-aware "
            f"{', '.join(DATA_AWARE_WEIGHT_METHODS)} needs calibration statistics), got {method!r}"
        )
    shift_bits = _int(shift_bits, "shift_bits", 0, 4)
    epochs = _int(epochs, "epochs", 1)
    batch_size = _int(batch_size, "batch_size", 1)
    seed = _int(seed, "seed", 0)
    lr = _real(lr, "lr", zero_ok=False)
    temperature = _real(temperature, "temperature", zero_ok=False)
    hint_weight = _real(hint_weight, "hint_weight", zero_ok=True)
    weight_decay = _real(weight_decay, "weight_decay", zero_ok=True)
    warmup_steps = _int(warmup_steps, "warmup_steps", 0)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not (isinstance(data, torch.Tensor) or callable(data)):
        raise TypeError(f"data must be a tensor of inputs or a callable epoch -> tensor, got {type(data).__name__}")
    if history is not None and not isinstance(history, list):
        raise TypeError(f"history must be None or a list, got {type(history).__name__}")
    pairs = _hint_pairs(hint_taps, student_graph, teacher)

    def epoch_inputs(epoch: int) -> torch.Tensor:
        if isinstance(data, torch.Tensor):
            return check_inputs(data, student_graph, batch_size)
        return check_inputs(data(epoch), student_graph, batch_size, f"the inputs data({epoch}) returned")

    first = epoch_inputs(0)
    student = _TappedStudent(
        student_graph, bits=bits, method=method, shift_bits=shift_bits, record=[s for s, _ in pairs]
    )
    run_teacher = (
        _GraphTeacher(teacher, [t for _, t in pairs])
        if isinstance(teacher, Graph)
        else _ModuleTeacher(teacher, [t for _, t in pairs])
    )
    try:
        return _train(
            student,
            run_teacher,
            pairs,
            first,
            epoch_inputs,
            bits=bits,
            method=method,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            temperature=temperature,
            hint_weight=hint_weight,
            optimizer=optimizer,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            seed=seed,
            progress=progress,
            history=history,
        )
    finally:
        if isinstance(run_teacher, _ModuleTeacher):
            run_teacher.close()


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _train(
    student: _TappedStudent,
    run_teacher,
    pairs,
    first: torch.Tensor,
    epoch_inputs,
    *,
    bits: int,
    method: str,
    epochs: int,
    lr: float,
    batch_size: int,
    temperature: float,
    hint_weight: float,
    optimizer: str,
    weight_decay: float,
    warmup_steps: int,
    seed: int,
    progress: bool,
    history: list | None,
) -> Graph:
    # what the student and the teacher produce on two inputs must fit the losses, before anything trains
    probe = _layout(first[:2])
    with torch.no_grad():
        try:
            t_logits, t_feats = run_teacher(probe)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"the teacher does not take inputs of shape {tuple(first.shape[1:])} ({exc})") from exc
        s_logits = student(probe)
    if not isinstance(t_logits, torch.Tensor) or t_logits.shape != s_logits.shape or s_logits.dim() != 2:
        raise ValueError(
            f"the teacher's output {tuple(getattr(t_logits, 'shape', ()))} does not match the student's "
            f"logits {tuple(s_logits.shape)}: both must be (N, classes) of the same shape"
        )
    terms = [Term(KDLoss(temperature), 1.0)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # hint adapters (only where channel counts differ) start the same for a seed
        for s, t in pairs:
            cs, ct = int(student.recorded[s].shape[1]), int(t_feats[t].shape[1])
            terms.append(Term(HintLoss(cs, ct), hint_weight, student=s, teacher=t, name=f"hint {s}"))
    losses = nn.ModuleList([term.loss for term in terms])
    config = OptimConfig(
        name=optimizer,
        lr=lr,
        momentum=0.9,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        schedule="cosine",
    )
    opt = config.make([*student.parameters(), *losses.parameters()])
    base_lr = [g["lr"] for g in opt.param_groups]

    total_steps = epochs * (first.shape[0] // batch_size)  # the schedule takes every epoch as long as the first
    step = 0
    t0 = time.perf_counter()
    student.train()
    for epoch in range(epochs):
        images = first if epoch == 0 else epoch_inputs(epoch)
        n_steps = images.shape[0] // batch_size
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        iterator = range(n_steps)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            iterator = bar = tqdm(
                iterator,
                desc=f"W{bits} {method} QAT-KD epoch {epoch + 1}/{epochs}",
                unit="step",
                leave=False,
                mininterval=1.0,
            )
        sums: dict[str, float] = {}
        for i in iterator:
            scale = 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
            if step < warmup_steps:
                scale *= (step + 1) / (warmup_steps + 1)
            for g, b in zip(opt.param_groups, base_lr):
                g["lr"] = b * scale
            x = _layout(images[order[i * batch_size : (i + 1) * batch_size]])
            with torch.no_grad():
                t_logits, t_feats = run_teacher(x)
            s_logits = student(x)
            parts = {}
            total: Any = 0.0  # a tensor after the first term
            for term in terms:
                if term.student == LOGITS:
                    value = term.loss(s_logits, t_logits)
                    parts["kd"] = value
                else:
                    value = term.loss(student.recorded[term.student], t_feats[term.teacher])
                    parts[term.name] = value
                total = total + term.weight * value
            values = {k: float(v.detach()) for k, v in parts.items()}
            values["loss"] = float(total.detach())
            if not math.isfinite(values["loss"]):  # before the step: the weights stay those of the last good one
                raise FloatingPointError(
                    f"the distillation loss became {values['loss']} at step {step + 1}: lower lr (now {lr:g})"
                )
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            student.recorded = {}
            step += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if history is not None:
                history.append({"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"], **values})
            if bar is not None:
                bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
        if history is not None:
            history.append(
                {
                    "epoch": epoch + 1,
                    "seconds": time.perf_counter() - t0,
                    **{f"mean_{k}": v / max(n_steps, 1) for k, v in sums.items()},
                }
            )
    student.eval()
    graph = student.to_graph()
    hints = f", hints at {', '.join(s for s, _ in pairs)}" if pairs else ""
    graph.notes.append(
        f"weights fine-tuned by label-free quantization-aware distillation: W{bits} {method}, "
        f"{step} steps of {batch_size} over {epochs} epoch(s), {optimizer} lr {lr:g} "
        f"({warmup_steps} warm-up steps), KD T={temperature:g}{hints}, seed {seed}"
    )
    return graph


__all__ = ["QAT_METHODS", "check_inputs", "label_free_qat"]
