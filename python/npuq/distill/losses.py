"""Distillation losses: what the student learns from the teacher, each as a small ``torch.nn.Module``.

Every loss is called as ``loss(student, teacher)`` with the student's and the teacher's tensor of the
same role (logits, a feature map, embeddings) and returns a scalar tensor. The teacher's tensor is
detached inside the loss: these losses never train the teacher, so a frozen teacher can run under
``torch.no_grad()`` and an online peer keeps its own graph for its own loss.

Response knowledge:

* :class:`KDLoss` -- softened logits with a temperature (Hinton et al. 2015).

Feature knowledge:

* :class:`HintLoss` -- a feature map regressed from the student's (FitNets, Romero et al. 2015); it owns
  a learned adapter, whose parameters the optimizer must see (``loss.parameters()``).
* :class:`AttentionTransfer` -- spatial attention maps (Zagoruyko & Komodakis 2017).

Relational knowledge (between the samples of a batch, so the batch needs at least 2 samples):

* :class:`RKDDistance`, :class:`RKDAngle`, :class:`RKD` -- distances and angles (Park et al. 2019).
* :class:`SimilarityPreserving` -- sample-by-sample similarity matrices (Tung & Mori 2019).
* :class:`PKT` -- probability distributions of cosine similarities (Passalis & Tefas 2018).

:class:`WeightedSum` combines several terms, returning the total and each term for logging.

Each loss is registered in :data:`npuq.registry.DISTILL_LOSSES` under the name a config's ``[[terms]]``
table gives as ``loss`` (``kd``, ``hint``, ...); a loss registered with ``channels=True`` is built with the
channel counts of the student's and the teacher's taps (``student_channels``, ``teacher_channels``).

Half-precision inputs (float16, bfloat16) are computed in float32 (softmax, Gram matrices and sums of
powers overflow or lose too much in half precision); the loss is then float32. Float64 stays float64.
The formulas exactly as implemented, and where they follow the official code rather than the paper's
text, are in ``docs/distillation_losses.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from numbers import Real

import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq.registry import DISTILL_LOSSES

__all__ = [
    "PKT",
    "RKD",
    "AttentionTransfer",
    "ChannelAdapter",
    "HintLoss",
    "KDLoss",
    "RKDAngle",
    "RKDDistance",
    "SimilarityPreserving",
    "WeightedSum",
]

_HALF_TYPES = (torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------- argument checks


def _finite_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, torch.Tensor)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a real number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _positive(value, name: str) -> float:
    value = _finite_real(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _non_negative(value, name: str) -> float:
    value = _finite_real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _channels(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int or None, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int or None, got {value}")
    return value


def _pair(loss: nn.Module, student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks both inputs; returns them in the compute dtype, the teacher's detached."""
    where = type(loss).__name__
    for name, x in (("student", student), ("teacher", teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{where}: {name} must be a floating-point tensor, got {x.dtype}")
        if x.dim() == 0:
            raise ValueError(f"{where}: {name} must have a batch dimension, got a scalar")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{where}: student and teacher must hold the same batch, got batch sizes "
            f"{student.shape[0]} and {teacher.shape[0]}"
        )
    return _compute_dtype(student), _compute_dtype(teacher.detach())


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _HALF_TYPES else x


def _common_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def _pool_to_common_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive average pooling of each map (N, C, *spatial) down to the smaller extent in every spatial
    dimension; maps of equal size are returned unchanged."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    target = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(target)]
    if tuple(a.shape[2:]) != target:
        a = pool(a, target)
    if tuple(b.shape[2:]) != target:
        b = pool(b, target)
    return a, b


def _embeddings(x: torch.Tensor, name: str, where: str, min_batch: int, why: str) -> torch.Tensor:
    """(N, ...) -> (N, D): one row per sample."""
    if x.dim() < 2:
        raise ValueError(f"{where}: {name} must be (N, D) embeddings or (N, C, ...) maps, got shape {tuple(x.shape)}")
    if x.shape[0] < min_batch:
        raise ValueError(f"{where} needs a batch of at least {min_batch} samples ({why}); {name} has {x.shape[0]}")
    return x.flatten(1)


# ------------------------------------------------------------------------------------------- response


@DISTILL_LOSSES.register("kd")
class KDLoss(nn.Module):
    """Knowledge distillation on softened logits (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge
    in a Neural Network").

    ``loss = T^2 * (1/N) * sum_n KL(softmax(t_n / T) || softmax(s_n / T))``

    ``s`` and ``t`` are the student's and the teacher's logits, shape (N, C) (the same shape); the
    softmax runs over the classes and the KL divergence is summed over the classes and averaged over the
    N samples of the batch (torch's ``reduction="batchmean"``, the true mean KL per sample). The ``T^2``
    factor keeps the gradient's magnitude roughly independent of T (the paper's argument: the soft
    targets' gradients scale as 1/T^2), so the usual combination with the hard-label cross entropy
    ``alpha * kd + (1 - alpha) * ce`` needs no re-tuning of ``alpha`` when T changes.

    Default ``temperature=4.0``, the common choice on CIFAR-scale classification (the paper itself
    used values from 2 to 20).
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = _positive(temperature, "temperature")

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _pair(self, student, teacher)
        if s.dim() != 2 or s.shape != t.shape:
            raise ValueError(
                f"KDLoss: student and teacher logits must both be (N, C) of the same shape, got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        s, t = _common_dtype(s, t)
        temperature = self.temperature
        log_p_student = F.log_softmax(s / temperature, dim=1)
        log_p_teacher = F.log_softmax(t / temperature, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return kl * (temperature * temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


# -------------------------------------------------------------------------------------------- features


class ChannelAdapter(nn.Module):
    """The FitNets regressor: at every position, an affine map from the student's channels to the
    teacher's, applied along dimension 1. On (N, C, H, W) maps this is a 1x1 convolution, on (N, C)
    features a linear layer; one ``nn.Linear`` (weight (C_teacher, C_student), bias) serves every rank,
    so the adapter can be built before the rank of the inputs is known."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(_channels(in_channels, "in_channels"), _channels(out_channels, "out_channels"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.linear(x)
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)


@DISTILL_LOSSES.register("hint", channels=True)  # its adapter is sized from the tapped channels
class HintLoss(nn.Module):
    """Hint-based feature distillation (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets").

    ``loss = mean((r(s) - t)^2)`` over all elements, where ``t`` is the teacher's feature map (the hint),
    ``s`` the student's (the guided layer) and ``r`` the learned regressor. The paper writes
    ``1/2 * ||t - r(s)||^2`` (a sum); the mean differs by a constant factor, which a term weight absorbs,
    and keeps the loss comparable across feature sizes.

    Inputs: (N, C) features or (N, C, L) / (N, C, H, W) maps, the student's and teacher's of the same rank.

    * Channels: when the counts differ, ``r`` is a :class:`ChannelAdapter` (a 1x1 convolution on maps, a
      linear layer on (N, C) features) from the student's channels to the teacher's; with equal counts
      ``r`` is the identity.
    * Spatial size: when it differs, the larger map is average-pooled (adaptive average pooling) to the
      smaller size in each spatial dimension, after the regressor (which, being affine per position,
      commutes with the averaging). The paper chooses the regressor's kernel so that the sizes match;
      pooling needs no extra parameters and is applied whatever ``adapter`` is.

    ``adapter``:

    * ``"auto"`` (default): with ``student_channels`` and ``teacher_channels`` given, the adapter is built
      here, eagerly, when they differ -- preferred, because the optimizer must be given
      ``loss.parameters()`` and a checkpoint's state dict must hold the adapter. Without them, it is built
      on the first call, from that call's channel counts, on the student's device, with a warning: the
      optimizer (built earlier) does not hold its parameters, so either pass the channels or run one
      batch through the loss before building the optimizer.
    * ``None``: no adapter; a channel mismatch raises ValueError.
    * an ``nn.Module``: a custom regressor applied to the student's tensor; its output must then match the
      teacher's channels.

    The adapter trains with the student: give the optimizer the student's parameters *and* this loss's,
    e.g. ``torch.optim.SGD([*student.parameters(), *hint.parameters()], lr=...)`` (or a
    :class:`WeightedSum` holding the loss, whose ``parameters()`` include it). The teacher's map is
    detached and never trained.
    """

    def __init__(
        self,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
        adapter: str | nn.Module | None = "auto",
    ):
        super().__init__()
        self.student_channels = _channels(student_channels, "student_channels")
        self.teacher_channels = _channels(teacher_channels, "teacher_channels")
        if (self.student_channels is None) != (self.teacher_channels is None):
            raise ValueError("HintLoss: give both student_channels and teacher_channels, or neither")
        channels_differ = self.student_channels != self.teacher_channels
        self.adapter: nn.Module | None = None
        if isinstance(adapter, nn.Module):
            self.adapter = adapter
            self.mode = "custom"
        elif adapter is None:
            if self.student_channels is not None and channels_differ:
                raise ValueError(
                    f"HintLoss: student_channels={self.student_channels} differs from teacher_channels="
                    f"{self.teacher_channels} and adapter=None; use adapter='auto' to learn a regressor"
                )
            self.mode = "none"
        elif isinstance(adapter, str) and adapter == "auto":
            self.mode = "auto"
            if self.student_channels is not None and channels_differ:
                self.adapter = ChannelAdapter(self.student_channels, self.teacher_channels)
        else:
            raise ValueError(f"HintLoss: adapter must be 'auto', None or an nn.Module, got {adapter!r}")

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _pair(self, student, teacher)
        if s.dim() != t.dim() or not 2 <= s.dim() <= 5:
            raise ValueError(
                f"HintLoss: student and teacher must be (N, C) features or (N, C, ...) maps of the same rank, "
                f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        self._check_declared_channels(s.shape[1], t.shape[1])
        adapter = self._adapter_for(s, t)
        if adapter is not None:
            weight = next(adapter.parameters(), None)
            if weight is not None and weight.is_floating_point():
                s = s.to(weight.dtype)  # the adapter's dtype wins (under autocast, autocast's does)
            s = adapter(s)
        if s.dim() == t.dim() and s.shape[:2] == t.shape[:2]:
            s, t = _pool_to_common_size(s, t)
        if s.shape != t.shape:
            hint = " (adapter=None: use adapter='auto' to learn a regressor)" if self.mode == "none" else ""
            raise ValueError(
                f"HintLoss: the student's map {tuple(s.shape)} (after the adapter and pooling) does not match "
                f"the teacher's {tuple(t.shape)}{hint}"
            )
        s, t = _common_dtype(s, t)
        return F.mse_loss(s, t)

    def _check_declared_channels(self, student_channels: int, teacher_channels: int) -> None:
        if self.student_channels is None:
            return
        if (student_channels, teacher_channels) != (self.student_channels, self.teacher_channels):
            raise ValueError(
                f"HintLoss was built for student_channels={self.student_channels}, teacher_channels="
                f"{self.teacher_channels}, got inputs with {student_channels} and {teacher_channels} channels"
            )

    def _adapter_for(self, s: torch.Tensor, t: torch.Tensor) -> nn.Module | None:
        if self.mode != "auto" or self.student_channels is not None:
            return self.adapter
        # first call of a lazily built loss: the channel counts are fixed from now on
        self.student_channels, self.teacher_channels = s.shape[1], t.shape[1]
        if s.shape[1] != t.shape[1]:
            warnings.warn(
                f"HintLoss built its adapter ({s.shape[1]} -> {t.shape[1]} channels) on the first call: an "
                f"optimizer created before this call does not hold its parameters. Pass student_channels and "
                f"teacher_channels to HintLoss to build it up front.",
                UserWarning,
                stacklevel=5,  # the caller of loss(...): _adapter_for, forward, two nn.Module call layers
            )
            self.adapter = ChannelAdapter(s.shape[1], t.shape[1]).to(device=s.device)
        return self.adapter

    def extra_repr(self) -> str:
        return f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, mode={self.mode!r}"


@DISTILL_LOSSES.register("attention")
class AttentionTransfer(nn.Module):
    """Activation-based attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to
    Attention: Improving the Performance of Convolutional Neural Networks via Attention Transfer").

    Attention map of a (N, C, H, W) activation ``A``: ``a = sum_c |A_c|^p`` (H, W), flattened and
    L2-normalized per sample: ``q = a / ||a||_2``.

    ``loss = beta / 2 * (1 / (N * H * W)) * sum_n ||q_s,n - q_t,n||_2^2``

    i.e. ``beta / 2`` times the *mean* of the squared differences over the batch and the positions. This
    is the form of the authors' official code (``(at(x) - at(y)).pow(2).mean()``, weighted by
    ``beta / 2`` with ``beta = 1000``), for which ``beta`` was tuned; the paper's text writes the norm of
    the difference, unsquared and summed per sample, which is a different scale. The code averages
    ``A^2`` over the channels instead of summing ``|A|^p``: the same map after the normalization.

    Channel counts may differ (the attention map has none). Spatial sizes should match; when they don't,
    the larger *attention map* (before normalization) is average-pooled to the smaller size. Inputs
    (N, C, L) work the same way with one spatial dimension.

    Defaults ``p=2`` (the paper's choice) and ``beta=1000.0``. ``p`` must be >= 1: for ``p < 1`` the
    gradient of ``|A|^p`` is infinite at zero activations (which ReLU produces everywhere).
    """

    def __init__(self, p: float = 2, beta: float = 1000.0):
        super().__init__()
        self.p = _finite_real(p, "p")
        if self.p < 1:
            raise ValueError(f"p must be >= 1, got {self.p}")
        self.beta = _non_negative(beta, "beta")

    def attention(self, feature: torch.Tensor) -> torch.Tensor:
        """(N, C, *spatial) -> (N, *spatial): the un-normalized attention map ``sum_c |A_c|^p``."""
        return feature.abs().pow(self.p).sum(dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _pair(self, student, teacher)
        if s.dim() not in (3, 4) or t.dim() != s.dim():
            raise ValueError(
                f"AttentionTransfer: student and teacher must be (N, C, H, W) (or (N, C, L)) maps, got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}"
            )
        # pooling takes (N, C, *spatial): the attention map enters as one channel
        a_s, a_t = _pool_to_common_size(self.attention(s).unsqueeze(1), self.attention(t).unsqueeze(1))
        q_s = F.normalize(a_s.flatten(1), p=2, dim=1)
        q_t = F.normalize(a_t.flatten(1), p=2, dim=1)
        q_s, q_t = _common_dtype(q_s, q_t)
        return self.beta / 2 * (q_s - q_t).pow(2).mean()

    def extra_repr(self) -> str:
        return f"p={self.p}, beta={self.beta}"


# ------------------------------------------------------------------------------------------- relations


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) Euclidean distances with an exact zero diagonal (no gradient through it: the
    derivative of the square root is infinite at 0)."""
    # centring first changes no distance but keeps |e|^2 small, against cancellation in the expansion
    e = e - e.mean(dim=0, keepdim=True)
    squared_norms = e.pow(2).sum(dim=1)
    squared = squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2 * (e @ e.t())
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    distances = squared.clamp_min(torch.finfo(e.dtype).tiny).sqrt()
    return distances * off_diagonal


def _distance_potential(e: torch.Tensor) -> torch.Tensor:
    """Distances divided by their mean over the N(N-1) pairs of distinct samples."""
    distances = _pairwise_distances(e)
    n = len(e)
    mean = distances.sum() / (n * (n - 1))
    return distances / mean.clamp_min(torch.finfo(e.dtype).tiny)


def _angle_potential(e: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N, N): ``[j, i, k]`` = cosine of the angle at ``e_j`` between ``e_i - e_j`` and
    ``e_k - e_j`` (0 where ``i == j`` or ``k == j``: a zero vector normalizes to zero)."""
    directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i] = unit(e_i - e_j)
    return torch.bmm(directions, directions.transpose(1, 2))


@DISTILL_LOSSES.register("rkd_distance")
class RKDDistance(nn.Module):
    """Distance-wise relational knowledge distillation (Park, Kim, Lu & Cho 2019, "Relational Knowledge
    Distillation"), RKD-D.

    Distance potential of embeddings ``e`` (N, D): ``psi(i, j) = ||e_i - e_j||_2 / mu``, ``mu`` the mean
    distance over the N(N-1) pairs of distinct samples of the batch.

    ``loss = (1 / N^2) * sum_{i, j} huber(psi_s(i, j) - psi_t(i, j))``

    with the Huber loss of threshold 1 (``F.smooth_l1_loss``, beta 1). The mean runs over all N^2 ordered
    pairs, the diagonal included (where both potentials are 0), as the authors' official code does; the
    paper writes a sum over pairs. The loss is invariant to translation, rotation and uniform scaling of
    either embedding, and the student's and teacher's dimensions D may differ.

    Inputs (N, D), or (N, C, ...) which are flattened to (N, C*...). N >= 2.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _pair(self, student, teacher)
        why = "a distance needs two samples"
        s = _embeddings(s, "student", "RKDDistance", 2, why)
        t = _embeddings(t, "teacher", "RKDDistance", 2, why)
        psi_s, psi_t = _common_dtype(_distance_potential(s), _distance_potential(t))
        return F.smooth_l1_loss(psi_s, psi_t, reduction="mean", beta=1.0)


@DISTILL_LOSSES.register("rkd_angle")
class RKDAngle(nn.Module):
    """Angle-wise relational knowledge distillation (Park et al. 2019), RKD-A.

    Angle potential of embeddings ``e`` (N, D): ``psi(i, j, k) = <u_ji, u_jk>``, the cosine of the angle
    at ``e_j`` of the triangle (e_i, e_j, e_k), with ``u_ji = (e_i - e_j) / ||e_i - e_j||_2``.

    ``loss = (1 / N^3) * sum_{i, j, k} huber(psi_s(i, j, k) - psi_t(i, j, k))``

    Huber threshold 1; the mean runs over all N^3 ordered triplets, degenerate ones included (their
    potential is 0 for both), as in the authors' official code. Invariant to translation, rotation and
    uniform scaling; D may differ between student and teacher. Memory O(N^2 * D + N^3).

    Inputs (N, D), or (N, C, ...) flattened. N >= 3 (an angle needs three samples).
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _pair(self, student, teacher)
        why = "an angle needs three samples; RKD(angle_weight=0) uses the distances only"
        s = _embeddings(s, "student", "RKDAngle", 3, why)
        t = _embeddings(t, "teacher", "RKDAngle", 3, why)
        psi_s, psi_t = _common_dtype(_angle_potential(s), _angle_potential(t))
        return F.smooth_l1_loss(psi_s, psi_t, reduction="mean", beta=1.0)


@DISTILL_LOSSES.register("rkd")
class RKD(nn.Module):
    """Relational knowledge distillation (Park et al. 2019): ``distance_weight * RKD-D + angle_weight *
    RKD-A`` (see :class:`RKDDistance` and :class:`RKDAngle`). Defaults 25 and 50, the weights the paper
    used for classification. A zero weight skips its term (an angle term needs N >= 3, a distance term
    N >= 2)."""

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.distance_weight = _non_negative(distance_weight, "distance_weight")
        self.angle_weight = _non_negative(angle_weight, "angle_weight")
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise ValueError("RKD: distance_weight and angle_weight are both 0; at least one must be > 0")
        self.distance = RKDDistance()
        self.angle = RKDAngle()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        total = None
        for weight, term in ((self.distance_weight, self.distance), (self.angle_weight, self.angle)):
            if weight > 0:
                value = weight * term(student, teacher)
                total = value if total is None else total + value
        return total

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"


@DISTILL_LOSSES.register("similarity")
class SimilarityPreserving(nn.Module):
    """Similarity-preserving knowledge distillation (Tung & Mori 2019, "Similarity-Preserving Knowledge
    Distillation").

    With ``Q`` the activations flattened to (b, C*H*W), ``G = row_normalize(Q Q^T)`` (each row of the
    b x b Gram matrix divided by its L2 norm), and

    ``loss = gamma / b^2 * ||G_s - G_t||_F^2``

    (the paper's per-layer-pair term; sum several instances for several pairs). Default ``gamma=3000.0``,
    the paper's value for CIFAR-10. Only b x b matrices are compared, so the student's and teacher's
    shapes may differ apart from the batch size. Invariant to a uniform scaling of either activation and to
    any orthogonal transform of its flattened features (e.g. a permutation of channels). b >= 2.
    """

    def __init__(self, gamma: float = 3000.0):
        super().__init__()
        self.gamma = _non_negative(gamma, "gamma")

    @staticmethod
    def similarity(x: torch.Tensor) -> torch.Tensor:
        """(b, ...) -> (b, b): the row-normalized Gram matrix ``G``."""
        q = x.flatten(1)
        return F.normalize(q @ q.t(), p=2, dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _pair(self, student, teacher)
        why = "a 1 x 1 similarity matrix is always [1]"
        s = _embeddings(s, "student", "SimilarityPreserving", 2, why)
        t = _embeddings(t, "teacher", "SimilarityPreserving", 2, why)
        g_s, g_t = _common_dtype(self.similarity(s), self.similarity(t))
        b = len(s)
        return self.gamma * (g_s - g_t).pow(2).sum() / (b * b)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


@DISTILL_LOSSES.register("pkt")
class PKT(nn.Module):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with
    Probabilistic Knowledge Transfer").

    Cosine-similarity kernel of embeddings ``x`` (N, D), shifted to [0, 1]:
    ``K(i, j) = (1 + cos(x_i, x_j)) / 2`` with ``cos(x_i, x_j) = <x_i, x_j> / ((||x_i|| + eps)(||x_j|| + eps))``;
    conditional probabilities ``p(j | i) = K(i, j) / sum_k K(i, k)``;

    ``loss = (1 / N^2) * sum_{i, j} p_t(j | i) * log((p_t(j | i) + eps) / (p_s(j | i) + eps))``

    i.e. the KL divergence of the teacher's conditional distribution from the student's, averaged per
    row and divided by N. This follows the authors' official code: the sums include ``j == i`` and the
    result is a mean over the N^2 entries; the paper's formula leaves out ``j == i`` and sums. Default
    ``eps=1e-7`` (the official code's). Invariant to a positive scaling of each sample's embedding (up to
    ``eps``); D may differ between student and teacher.

    Inputs (N, D), or (N, C, ...) flattened. N >= 2.
    """

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = _positive(eps, "eps")

    def conditional_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, N): row i is the distribution ``p(. | i)``."""
        unit = x / (x.norm(p=2, dim=1, keepdim=True) + self.eps)
        kernel = (unit @ unit.t() + 1) / 2
        return kernel / kernel.sum(dim=1, keepdim=True)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = _pair(self, student, teacher)
        why = "the conditional probabilities are over the other samples"
        s = _embeddings(s, "student", "PKT", 2, why)
        t = _embeddings(t, "teacher", "PKT", 2, why)
        p_s, p_t = _common_dtype(self.conditional_probabilities(s), self.conditional_probabilities(t))
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


# ------------------------------------------------------------------------------------------ combination


class WeightedSum(nn.Module):
    """Several distillation terms with non-negative weights: ``total = sum_k w_k * loss_k(s_k, t_k)``.

    ``terms``: a mapping ``{name: (loss, weight)}`` or an iterable of ``(name, loss, weight)`` triples.
    The losses are registered as sub-modules, so ``parameters()`` includes learned parts such as a
    :class:`HintLoss` adapter (give them to the optimizer) and ``.to(device)`` moves them.

    ``forward(inputs)`` takes ``{name: (student_tensor, teacher_tensor)}`` with exactly the terms' names
    and returns ``(total, values)``: the weighted total (a scalar tensor to backpropagate) and
    ``{name: value}``, each term's *unweighted* value, detached (for logging; the weights are in
    ``self.weights``). A zero weight keeps a term for monitoring only: it is still computed and logged.
    """

    def __init__(self, terms):
        super().__init__()
        items = list(terms.items()) if isinstance(terms, Mapping) else list(_triples(terms))
        if not items:
            raise ValueError("WeightedSum: terms is empty; give at least one (loss, weight)")
        self.losses = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, entry in items:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"WeightedSum: term names must be non-empty strings without '.', got {name!r}")
            if name in self.weights:
                raise ValueError(f"WeightedSum: term name {name!r} appears twice")
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise TypeError(f"WeightedSum: term {name!r} must be (loss, weight), got {entry!r}")
            loss, weight = entry
            if not isinstance(loss, nn.Module):
                raise TypeError(
                    f"WeightedSum: the loss of term {name!r} must be an nn.Module, got {type(loss).__name__}"
                )
            self.losses[name] = loss
            self.weights[name] = _non_negative(weight, f"weight of term {name!r}")

    def forward(self, inputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]):
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"WeightedSum: inputs must be a mapping {{name: (student, teacher)}}, got {type(inputs).__name__}"
            )
        missing = [n for n in self.weights if n not in inputs]
        unknown = [n for n in inputs if n not in self.weights]
        if missing or unknown:
            raise KeyError(
                f"WeightedSum: inputs must name exactly the terms {list(self.weights)}; "
                f"missing {missing}, unknown {unknown}"
            )
        total = None
        values: dict[str, torch.Tensor] = {}
        for name, loss in self.losses.items():
            pair = inputs[name]
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"WeightedSum: inputs[{name!r}] must be (student, teacher)")
            value = loss(*pair)
            values[name] = value.detach()
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
        return total, values

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: {weight}" for name, weight in self.weights.items())


def _triples(terms: Iterable):
    for entry in terms:
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise TypeError(f"WeightedSum: each term must be (name, loss, weight), got {entry!r}")
        name, loss, weight = entry
        yield name, (loss, weight)
