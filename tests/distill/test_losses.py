"""Distillation losses (`npuq.distill.losses`): each loss against a reference written independently (loops
over samples and elements in float64), the papers' invariances, gradients (to the student, never to the
teacher), the hint adapter, dtypes and devices, and the argument checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from npuq.distill.losses import (
    PKT,
    RKD,
    AttentionTransfer,
    ChannelAdapter,
    HintLoss,
    KDLoss,
    RKDAngle,
    RKDDistance,
    SimilarityPreserving,
    WeightedSum,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tensors: see conftest.py

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def randn(*shape, seed: int, dtype=torch.float64, requires_grad: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)


def assert_scalar_close(actual: torch.Tensor, expected: float, rel: float = 1e-9, abs_: float = 1e-12) -> None:
    assert actual.dim() == 0
    assert math.isfinite(expected) and abs(expected) > abs_, "degenerate test: the expected loss is ~0"
    assert float(actual.detach()) == pytest.approx(expected, rel=rel, abs=abs_)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(randn(d, d, seed=seed))
    return q * torch.sign(torch.diagonal(r))


# ------------------------------------------------------------------------- references (loops, float64)


def softmax_list(z: list[float]) -> list[float]:
    top = max(z)
    exps = [math.exp(v - top) for v in z]
    total = sum(exps)
    return [e / total for e in exps]


def kd_reference(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    total = 0.0
    for s_row, t_row in zip(s.tolist(), t.tolist()):
        p_s = softmax_list([v / temperature for v in s_row])
        p_t = softmax_list([v / temperature for v in t_row])
        total += sum(pt * (math.log(pt) - math.log(ps)) for ps, pt in zip(p_s, p_t))
    return temperature**2 * total / len(s)


def attention_reference(s: torch.Tensor, t: torch.Tensor, p: float, beta: float) -> float:
    n, _, h, w = s.shape
    total = 0.0
    for i in range(n):
        maps = []
        for x in (s[i], t[i]):
            a = [sum(abs(float(x[c, y, z])) ** p for c in range(x.shape[0])) for y in range(h) for z in range(w)]
            norm = math.sqrt(sum(v * v for v in a))
            maps.append([v / norm for v in a])
        total += sum((a - b) ** 2 for a, b in zip(*maps))
    return beta / 2 * total / (n * h * w)


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def rows(x: torch.Tensor) -> list[list[float]]:
    return x.reshape(len(x), -1).tolist()


def distance_potential_reference(e: list[list[float]]) -> list[list[float]]:
    n = len(e)
    d = [[math.dist(e[i], e[j]) for j in range(n)] for i in range(n)]
    mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return [[v / mu for v in row] for row in d]


def rkd_distance_reference(s: torch.Tensor, t: torch.Tensor) -> float:
    psi_s, psi_t = distance_potential_reference(rows(s)), distance_potential_reference(rows(t))
    n = len(psi_s)
    return sum(huber(psi_s[i][j] - psi_t[i][j]) for i in range(n) for j in range(n)) / n**2


def cosine_at_vertex(e: list[list[float]], i: int, j: int, k: int) -> float:
    u = [a - b for a, b in zip(e[i], e[j])]
    v = [a - b for a, b in zip(e[k], e[j])]
    nu, nv = math.hypot(*u), math.hypot(*v)
    if nu == 0 or nv == 0:
        return 0.0
    return sum(a * b for a, b in zip(u, v)) / (nu * nv)


def rkd_angle_reference(s: torch.Tensor, t: torch.Tensor) -> float:
    e_s, e_t = rows(s), rows(t)
    n = len(e_s)
    total = sum(
        huber(cosine_at_vertex(e_s, i, j, k) - cosine_at_vertex(e_t, i, j, k))
        for i in range(n)
        for j in range(n)
        for k in range(n)
    )
    return total / n**3


def sp_reference(s: torch.Tensor, t: torch.Tensor, gamma: float) -> float:
    def similarity(q):
        g = [[sum(a * b for a, b in zip(qi, qj)) for qj in q] for qi in q]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in g]

    g_s, g_t = similarity(rows(s)), similarity(rows(t))
    b = len(g_s)
    return gamma * sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def pkt_reference(s: torch.Tensor, t: torch.Tensor, eps: float) -> float:
    def conditional(x):
        norms = [math.sqrt(sum(v * v for v in row)) for row in x]
        kernel = [
            [(1 + sum(a * b for a, b in zip(xi, xj)) / ((ni + eps) * (nj + eps))) / 2 for xj, nj in zip(x, norms)]
            for xi, ni in zip(x, norms)
        ]
        return [[v / sum(row) for v in row] for row in kernel]

    p_s, p_t = conditional(rows(s)), conditional(rows(t))
    n = len(p_s)
    total = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(n) for j in range(n))
    return total / n**2


# --------------------------------------------------------------------------------------------- KDLoss


@pytest.mark.parametrize("temperature", [1.0, 4.0, 7.5])
def test_kd_matches_reference_and_torch_kl_div(temperature):
    s, t = randn(5, 7, seed=1) * 3, randn(5, 7, seed=2) * 3
    loss = KDLoss(temperature)(s, t)
    assert_scalar_close(loss, kd_reference(s, t, temperature))
    torch_kl = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="sum") / 5
    assert_scalar_close(loss, float(torch_kl) * temperature**2)


def test_kd_default_temperature_is_4():
    assert KDLoss().temperature == 4.0
    s, t = randn(3, 4, seed=3), randn(3, 4, seed=4)
    assert_scalar_close(KDLoss()(s, t), kd_reference(s, t, 4.0))


def test_kd_is_zero_for_equal_logits_and_invariant_to_per_sample_shifts():
    s, t = randn(4, 6, seed=5), randn(4, 6, seed=6)
    assert float(KDLoss()(s, s.clone())) == pytest.approx(0.0, abs=1e-12)
    shifted = s + randn(4, 1, seed=7) * 10  # softmax ignores a constant added to a sample's logits
    assert float(KDLoss()(shifted, t)) == pytest.approx(float(KDLoss()(s, t)), rel=1e-9)


def test_kd_t_squared_keeps_the_high_temperature_gradient_at_the_logit_difference():
    # Hinton et al.: for T >> |logits| with zero-mean logits, d(loss)/ds ~ (s - t) / (C * N) once scaled by T^2
    n, c = 3, 5
    s = randn(n, c, seed=8)
    t = randn(n, c, seed=9)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    expected = (s - t) / (c * n)
    errors = []
    for temperature in (25.0, 100.0, 400.0):
        student = s.clone().requires_grad_(True)
        KDLoss(temperature)(student, t).backward()
        errors.append(float((student.grad - expected).norm() / expected.norm()))
    # the approximation error falls as 1/T: the T^2 factor leaves no residual dependence on T
    assert errors[0] < 0.05 and errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3


def test_kd_batch_of_one_works():
    s, t = randn(1, 3, seed=10), randn(1, 3, seed=11)
    assert_scalar_close(KDLoss(2.0)(s, t), kd_reference(s, t, 2.0))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_kd_rejects_non_positive_or_non_finite_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(bad)


def test_kd_rejects_non_numeric_temperature():
    with pytest.raises(TypeError, match="temperature"):
        KDLoss("4")
    with pytest.raises(TypeError, match="temperature"):
        KDLoss(True)


def test_kd_rejects_mismatched_or_non_2d_logits():
    with pytest.raises(ValueError, match=r"same shape.*\(4, 10\).*\(4, 11\)"):
        KDLoss()(torch.randn(4, 10), torch.randn(4, 11))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        KDLoss()(torch.randn(4, 10, 2), torch.randn(4, 10, 2))
    with pytest.raises(ValueError, match="batch"):
        KDLoss()(torch.randn(4, 10), torch.randn(3, 10))
    with pytest.raises(TypeError, match="teacher"):
        KDLoss()(torch.randn(4, 10), [[0.0] * 10] * 4)
    with pytest.raises(TypeError, match="floating"):
        KDLoss()(torch.zeros(4, 10, dtype=torch.long), torch.randn(4, 10))


# ------------------------------------------------------------------------------------------- HintLoss


def test_hint_without_adapter_is_the_mean_squared_error():
    s, t = randn(2, 3, 4, 5, seed=12), randn(2, 3, 4, 5, seed=13)
    expected = sum((a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())) / s.numel()
    for loss in (HintLoss(), HintLoss(adapter=None), HintLoss(3, 3)):
        assert_scalar_close(loss(s, t), expected)
        assert list(loss.parameters()) == []


def test_hint_eager_adapter_is_a_learned_1x1_conv_with_gradients():
    loss = HintLoss(student_channels=3, teacher_channels=6).double()
    params = list(loss.parameters())
    assert [tuple(p.shape) for p in params] == [(6, 3), (6,)]  # exists before any call: the optimizer sees it
    s = randn(2, 3, 4, 4, seed=14, requires_grad=True)
    t = randn(2, 6, 4, 4, seed=15)
    value = loss(s, t)
    weight, bias = loss.adapter.linear.weight, loss.adapter.linear.bias
    regressed = F.conv2d(s.detach(), weight.detach().reshape(6, 3, 1, 1), bias.detach())
    assert_scalar_close(value, float(((regressed - t) ** 2).mean()))
    value.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)
    assert float(s.grad.abs().sum()) > 0


def test_hint_adapter_on_2d_features_is_a_linear_layer():
    loss = HintLoss(5, 3).double()
    s, t = randn(4, 5, seed=16), randn(4, 3, seed=17)
    expected = ((s @ loss.adapter.linear.weight.detach().t() + loss.adapter.linear.bias.detach() - t) ** 2).mean()
    assert_scalar_close(loss(s, t), float(expected))


def test_hint_pools_the_larger_map_to_the_smaller():
    s, t = randn(2, 3, 8, 6, seed=18), randn(2, 3, 4, 3, seed=19)
    pooled = s.reshape(2, 3, 4, 2, 3, 2).mean(dim=(3, 5))  # 2 x 2 blocks, written without adaptive pooling
    assert_scalar_close(HintLoss()(s, t), float(((pooled - t) ** 2).mean()))
    # the other way round: the teacher's map is the larger one
    assert_scalar_close(HintLoss()(t, s), float(((t - pooled) ** 2).mean()))


def test_hint_lazy_adapter_warns_builds_once_and_then_fixes_the_channels():
    loss = HintLoss()
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3)
    with pytest.warns(UserWarning, match="student_channels and teacher_channels"):
        loss(s, t)
    assert [tuple(p.shape) for p in loss.parameters()] == [(8, 4), (8,)]
    loss(s, t)  # no second build
    assert len(list(loss.parameters())) == 2
    with pytest.raises(ValueError, match="student_channels=4"):
        loss(torch.randn(2, 5, 3, 3), t)


def test_hint_without_adapter_rejects_channel_mismatch_naming_the_adapter():
    with pytest.raises(ValueError, match="adapter='auto'"):
        HintLoss(adapter=None)(torch.randn(2, 4, 3, 3), torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError, match="adapter='auto'"):
        HintLoss(4, 8, adapter=None)


def test_hint_accepts_a_custom_adapter_module():
    conv = nn.Conv2d(4, 8, 3, padding=1).double()
    loss = HintLoss(adapter=conv)
    s, t = randn(2, 4, 5, 5, seed=20), randn(2, 8, 5, 5, seed=21)
    assert_scalar_close(loss(s, t), ((conv(s) - t) ** 2).mean().item())
    assert len(list(loss.parameters())) == 2


def test_hint_rejects_bad_arguments():
    with pytest.raises(ValueError, match="both"):
        HintLoss(student_channels=4)
    with pytest.raises(ValueError, match="teacher_channels"):
        HintLoss(4, 0)
    with pytest.raises(TypeError, match="student_channels"):
        HintLoss(4.0, 8)
    with pytest.raises(ValueError, match="adapter"):
        HintLoss(adapter="conv")
    with pytest.raises(ValueError, match="same rank"):
        HintLoss()(torch.randn(2, 4), torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="built for"):
        HintLoss(4, 8)(torch.randn(2, 5, 3, 3), torch.randn(2, 8, 3, 3))


def test_channel_adapter_rejects_bad_channels():
    with pytest.raises(ValueError, match="in_channels"):
        ChannelAdapter(0, 3)


# ---------------------------------------------------------------------------------- AttentionTransfer


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_attention_transfer_matches_reference(p):
    s, t = randn(3, 4, 3, 5, seed=22), randn(3, 6, 3, 5, seed=23)  # channel counts may differ
    assert_scalar_close(AttentionTransfer(p=p, beta=10.0)(s, t), attention_reference(s, t, p, 10.0))


def test_attention_transfer_defaults_follow_the_official_code():
    loss = AttentionTransfer()
    assert (loss.p, loss.beta) == (2, 1000.0)
    s, t = randn(2, 3, 4, 4, seed=24), randn(2, 5, 4, 4, seed=25)

    # the official form, written with its own ops: beta/2 * mean of the squared normalized-map differences
    def official(x):
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    assert_scalar_close(loss(s, t), float(500.0 * (official(s) - official(t)).pow(2).mean()))


def test_attention_transfer_invariances_and_zero():
    s, t = randn(2, 4, 4, 4, seed=26), randn(2, 4, 4, 4, seed=27)
    loss = AttentionTransfer()
    base = float(loss(s, t))
    assert float(loss(3.7 * s, t)) == pytest.approx(base, rel=1e-9)  # uniform scaling of an activation
    assert float(loss(s[:, [2, 0, 3, 1]], t)) == pytest.approx(base, rel=1e-9)  # channel order
    assert float(loss(-s, t)) == pytest.approx(base, rel=1e-9)  # |A|^p ignores signs
    assert float(loss(t, t.clone())) == pytest.approx(0.0, abs=1e-12)


def test_attention_transfer_pools_the_larger_attention_map():
    s, t = randn(2, 3, 8, 8, seed=28), randn(2, 5, 4, 4, seed=29)
    a_s = (s**2).sum(1).reshape(2, 4, 2, 4, 2).mean(dim=(2, 4)).flatten(1)
    a_t = (t**2).sum(1).flatten(1)
    q_s, q_t = a_s / a_s.norm(dim=1, keepdim=True), a_t / a_t.norm(dim=1, keepdim=True)
    assert_scalar_close(AttentionTransfer()(s, t), float(500.0 * ((q_s - q_t) ** 2).mean()))


def test_attention_transfer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p must be >= 1"):
        AttentionTransfer(p=0.5)
    with pytest.raises(ValueError, match="beta"):
        AttentionTransfer(beta=-1.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        AttentionTransfer()(torch.randn(2, 8), torch.randn(2, 8))


# ------------------------------------------------------------------------------------------------ RKD


def test_rkd_distance_matches_reference():
    s, t = randn(6, 4, seed=30), randn(6, 9, seed=31) * 2.5  # embedding sizes may differ
    assert_scalar_close(RKDDistance()(s, t), rkd_distance_reference(s, t))


def test_rkd_distance_uses_both_huber_branches():
    # a tight student cluster with one far outlier: some normalized distances differ by more than 1
    s = torch.cat([randn(5, 3, seed=32) * 0.01, torch.full((1, 3), 10.0, dtype=torch.float64)])
    t = randn(6, 3, seed=33)
    diffs = [
        abs(a - b)
        for ra, rb in zip(distance_potential_reference(rows(s)), distance_potential_reference(rows(t)))
        for a, b in zip(ra, rb)
    ]
    assert max(diffs) > 1 and min(d for d in diffs if d > 0) < 1
    assert_scalar_close(RKDDistance()(s, t), rkd_distance_reference(s, t))


def test_rkd_angle_matches_reference():
    s, t = randn(5, 4, seed=34), randn(5, 3, seed=35)
    assert_scalar_close(RKDAngle()(s, t), rkd_angle_reference(s, t))


def test_rkd_combines_the_weighted_terms_and_defaults_to_25_and_50():
    s, t = randn(5, 4, seed=36), randn(5, 4, seed=37)
    expected = 25.0 * rkd_distance_reference(s, t) + 50.0 * rkd_angle_reference(s, t)
    assert_scalar_close(RKD()(s, t), expected)
    assert_scalar_close(RKD(distance_weight=2.0, angle_weight=0.0)(s, t), 2.0 * rkd_distance_reference(s, t))


@pytest.mark.parametrize("loss", [RKDDistance(), RKDAngle()], ids=["distance", "angle"])
def test_rkd_is_invariant_to_similarity_transforms_of_the_embeddings(loss):
    s, t = randn(6, 5, seed=38), randn(6, 5, seed=39)
    base = float(loss(s, t))
    moved = 7.3 * s @ random_orthogonal(5, seed=40) + randn(1, 5, seed=41) * 4  # scale, rotate, translate
    assert float(loss(moved, t)) == pytest.approx(base, rel=1e-7)
    assert float(loss(s, 0.01 * t)) == pytest.approx(base, rel=1e-7)
    assert float(loss(moved, s)) == pytest.approx(0.0, abs=1e-12)


def test_rkd_flattens_feature_maps():
    s, t = randn(4, 2, 3, 3, seed=42), randn(4, 5, 2, 2, seed=43)
    assert float(RKD()(s, t)) == pytest.approx(float(RKD()(s.flatten(1), t.flatten(1))), rel=1e-12)


def test_rkd_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        RKDDistance()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="at least 3 samples"):
        RKDAngle()(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="angle_weight=0"):
        RKD()(torch.randn(2, 4), torch.randn(2, 4))
    assert torch.isfinite(RKD(angle_weight=0.0)(torch.randn(2, 4), torch.randn(2, 4)))


def test_rkd_rejects_bad_weights():
    with pytest.raises(ValueError, match="distance_weight"):
        RKD(distance_weight=-1.0)
    with pytest.raises(ValueError, match="angle_weight"):
        RKD(angle_weight=float("nan"))
    with pytest.raises(ValueError, match="both 0"):
        RKD(0.0, 0.0)


# ------------------------------------------------------------------------------- SimilarityPreserving


def test_similarity_preserving_matches_reference():
    s, t = randn(5, 3, 2, 2, seed=44), randn(5, 7, seed=45)  # only the batch sizes must agree
    assert_scalar_close(SimilarityPreserving(gamma=2.0)(s, t), sp_reference(s, t, 2.0))
    assert SimilarityPreserving().gamma == 3000.0


def test_similarity_preserving_invariances_and_zero():
    s, t = randn(6, 8, seed=46), randn(6, 5, seed=47)
    loss = SimilarityPreserving()
    base = float(loss(s, t))
    assert float(loss(0.2 * s, t)) == pytest.approx(base, rel=1e-9)  # uniform scaling
    assert float(loss(s @ random_orthogonal(8, seed=48), t)) == pytest.approx(base, rel=1e-9)  # rotation of features
    assert float(loss(s[:, torch.randperm(8)], t)) == pytest.approx(base, rel=1e-9)  # channel order
    assert float(loss(s, s.clone())) == pytest.approx(0.0, abs=1e-12)


def test_similarity_preserving_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gamma"):
        SimilarityPreserving(gamma=-3.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        SimilarityPreserving()(torch.randn(1, 4), torch.randn(1, 4))


# ------------------------------------------------------------------------------------------------ PKT


def test_pkt_matches_reference():
    s, t = randn(5, 6, seed=49), randn(5, 3, seed=50)
    assert_scalar_close(PKT()(s, t), pkt_reference(s, t, 1e-7))
    assert_scalar_close(PKT(eps=1e-3)(s, t), pkt_reference(s, t, 1e-3))


def test_pkt_is_invariant_to_per_sample_scaling_and_zero_for_equal_inputs():
    s, t = randn(6, 4, seed=51), randn(6, 4, seed=52)
    base = float(PKT()(s, t))
    scales = torch.rand(6, 1, generator=torch.Generator().manual_seed(53), dtype=torch.float64) * 5 + 0.5
    assert float(PKT()(s * scales, t)) == pytest.approx(base, rel=1e-5)
    assert float(PKT()(s, s.clone())) == pytest.approx(0.0, abs=1e-12)


def test_pkt_rejects_bad_arguments():
    with pytest.raises(ValueError, match="eps"):
        PKT(eps=0.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        PKT()(torch.randn(1, 4), torch.randn(1, 4))


# ------------------------------------------------------------------------------------ every loss alike


def make_cases():
    """(id, loss, student shape, teacher shape) for every loss."""
    return [
        ("kd", KDLoss(), (4, 10), (4, 10)),
        ("hint", HintLoss(4, 6), (4, 4, 5, 5), (4, 6, 5, 5)),
        ("at", AttentionTransfer(), (4, 4, 5, 5), (4, 6, 5, 5)),
        ("rkd", RKD(), (4, 8), (4, 12)),
        ("sp", SimilarityPreserving(), (4, 4, 3, 3), (4, 6, 3, 3)),
        ("pkt", PKT(), (4, 8), (4, 12)),
    ]


CASES = make_cases()
CASE_IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,loss,s_shape,t_shape", CASES, ids=CASE_IDS)
def test_gradient_reaches_the_student_and_never_the_teacher(name, loss, s_shape, t_shape):
    student = torch.randn(*s_shape, requires_grad=True)
    teacher = torch.randn(*t_shape, requires_grad=True)
    value = loss(student, teacher)
    assert value.requires_grad
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert float(student.grad.abs().sum()) > 0
    assert teacher.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,loss,s_shape,t_shape", CASES, ids=CASE_IDS)
def test_half_precision_inputs_are_computed_in_float32(name, loss, s_shape, t_shape, dtype):
    gen = torch.Generator().manual_seed(54)
    student = torch.randn(*s_shape, generator=gen).to(dtype)
    teacher = torch.randn(*t_shape, generator=gen).to(dtype)
    value = loss(student, teacher)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert value.item() == pytest.approx(loss(student.float(), teacher.float()).item(), rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,loss,s_shape,t_shape", CASES, ids=CASE_IDS)
def test_every_loss_runs_on_each_device(name, loss, s_shape, t_shape, device):
    gen = torch.Generator().manual_seed(55)
    student = torch.randn(*s_shape, generator=gen)
    teacher = torch.randn(*t_shape, generator=gen)
    expected = loss(student, teacher).item()
    loss_on = loss.to(device)
    s_dev = student.to(device).requires_grad_(True)
    value = loss_on(s_dev, teacher.to(device))
    assert value.device.type == device
    assert value.item() == pytest.approx(expected, rel=1e-4)
    value.backward()
    assert torch.isfinite(s_dev.grad).all()
    loss.to("cpu")


@pytest.mark.parametrize("name,loss,s_shape,t_shape", CASES, ids=CASE_IDS)
def test_every_loss_rejects_different_batch_sizes(name, loss, s_shape, t_shape):
    with pytest.raises(ValueError, match="batch"):
        loss(torch.randn(*s_shape), torch.randn(s_shape[0] + 1, *t_shape[1:]))


# ----------------------------------------------------------------------------------------- WeightedSum


def test_weighted_sum_totals_the_weighted_terms_and_reports_each():
    kd, hint = KDLoss(2.0), HintLoss(3, 5)
    combined = WeightedSum({"kd": (kd, 0.5), "hint": (hint, 2.0)})
    logits_s, logits_t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    feat_s, feat_t = torch.randn(4, 3, 2, 2, requires_grad=True), torch.randn(4, 5, 2, 2)
    total, values = combined({"kd": (logits_s, logits_t), "hint": (feat_s, feat_t)})
    kd_value, hint_value = kd(logits_s, logits_t).item(), hint(feat_s, feat_t).item()
    assert total.item() == pytest.approx(0.5 * kd_value + 2.0 * hint_value, rel=1e-6)
    assert list(values) == ["kd", "hint"]
    assert float(values["kd"]) == pytest.approx(kd_value, rel=1e-6)
    assert float(values["hint"]) == pytest.approx(hint_value, rel=1e-6)
    assert not values["kd"].requires_grad
    # the hint adapter is among the parameters the optimizer must receive
    assert {id(p) for p in combined.parameters()} == {id(p) for p in hint.parameters()}
    total.backward()
    assert hint.adapter.linear.weight.grad is not None and logits_s.grad is not None


def test_weighted_sum_accepts_triples_and_zero_weights():
    combined = WeightedSum([("a", KDLoss(), 0.0), ("b", KDLoss(1.0), 1.0)])
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    total, values = combined({"a": (s, t), "b": (s, t)})
    assert float(total) == pytest.approx(float(values["b"]), rel=1e-6)
    assert float(values["a"]) > 0  # monitored, not trained on


def test_weighted_sum_rejects_bad_terms_and_inputs():
    with pytest.raises(ValueError, match="weight of term 'kd'"):
        WeightedSum({"kd": (KDLoss(), -0.1)})
    with pytest.raises(ValueError, match="weight of term 'kd'"):
        WeightedSum({"kd": (KDLoss(), float("inf"))})
    with pytest.raises(ValueError, match="empty"):
        WeightedSum({})
    with pytest.raises(TypeError, match="nn.Module"):
        WeightedSum({"kd": (lambda s, t: s.sum(), 1.0)})
    with pytest.raises(ValueError, match="twice"):
        WeightedSum([("a", KDLoss(), 1.0), ("a", KDLoss(), 1.0)])
    combined = WeightedSum({"kd": (KDLoss(), 1.0)})
    with pytest.raises(KeyError, match="missing"):
        combined({"hint": (torch.randn(2, 3), torch.randn(2, 3))})
