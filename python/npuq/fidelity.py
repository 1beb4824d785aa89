"""Fidelity of a compressed model to its float original, measured without labels.

For a model whose labelled test data cannot be had (ImageNet models on an offline machine, see
:mod:`npuq.data.photos`), the reference is the FP32 model itself. On the same inputs:

* ``top1_agreement``: fraction of inputs where both models pick the same class;
* ``top5_agreement``: fraction where the FP32 model's class is among the compressed model's five best;
* ``kl_mean``: mean over inputs of KL(softmax(FP32) || softmax(compressed)), in nats;
* ``logit_sqnr_db``: ``10 log10(sum z^2 / sum (z - z_hat)^2)`` over all logits.

Each comes with its spread over the inputs: a 95% percentile bootstrap interval (inputs resampled with
replacement, a fixed seed, so the interval is reproducible). :func:`paired_difference` compares two
compressed models on the same inputs, resampling the inputs jointly, which is the honest way to say
whether one beats the other or the difference lies within the spread: with 500 crops one crop is
0.2 points of agreement.
"""

from __future__ import annotations

import math

import torch

from npuq.evaluation import evaluation_mode

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
TOP_K = 5


def _logits(z, name: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        try:
            z = torch.as_tensor(z)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a (N, classes) array of logits, got {type(z).__name__}") from exc
    if z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 2:
        raise ValueError(f"{name} must have shape (N, classes) with N >= 1 and classes >= 2, got {tuple(z.shape)}")
    z = z.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return z


def per_input(reference, logits) -> dict[str, torch.Tensor]:
    """Per-input values: top-1 match, top-5 hit, KL (nats), and the signal / noise energies of the logits."""
    ref, z = _logits(reference, "reference"), _logits(logits, "logits")
    if ref.shape != z.shape:
        raise ValueError(f"reference and logits differ in shape: {tuple(ref.shape)} vs {tuple(z.shape)}")
    cls = ref.argmax(dim=1)
    k = min(TOP_K, z.shape[1])
    top5 = (z.topk(k, dim=1).indices == cls[:, None]).any(dim=1)
    logp, logq = torch.log_softmax(ref, dim=1), torch.log_softmax(z, dim=1)
    kl = (logp.exp() * (logp - logq)).sum(dim=1).clamp_(min=0.0)
    return {
        "top1": (z.argmax(dim=1) == cls).double(),
        "top5": top5.double(),
        "kl": kl,
        "signal": (ref**2).sum(dim=1),
        "noise": ((ref - z) ** 2).sum(dim=1),
    }


def _sqnr(signal: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return torch.where(
        noise > 0, 10.0 * torch.log10(signal / noise.clamp(min=1e-300)), torch.full_like(signal, math.inf)
    )


def _summaries(v: dict[str, torch.Tensor], idx: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The four metrics, for each row of resampling indices ``idx`` (B, N) (or once, on all inputs)."""
    if idx is None:
        return {
            "top1_agreement": v["top1"].mean(),
            "top5_agreement": v["top5"].mean(),
            "kl_mean": v["kl"].mean(),
            "logit_sqnr_db": _sqnr(v["signal"].sum(), v["noise"].sum()),
        }
    return {
        "top1_agreement": v["top1"][idx].mean(dim=1),
        "top5_agreement": v["top5"][idx].mean(dim=1),
        "kl_mean": v["kl"][idx].mean(dim=1),
        "logit_sqnr_db": _sqnr(v["signal"][idx].sum(dim=1), v["noise"][idx].sum(dim=1)),
    }


def _resample(n: int, samples: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (samples, n), generator=g)


def _interval(values: torch.Tensor) -> list[float]:
    finite = values[torch.isfinite(values)]
    if finite.numel() < values.numel():
        return [float("nan"), float("nan")]
    q = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=values.dtype))
    return [float(q[0]), float(q[1])]


def fidelity(reference, logits, *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """The metrics of the module doc with their 95% bootstrap intervals (``{name}_ci``) and ``n``."""
    v = per_input(reference, logits)
    n = int(v["top1"].numel())
    out = {k: float(t) for k, t in _summaries(v, None).items()}
    if bootstrap:
        boot = _summaries(v, _resample(n, bootstrap, seed))
        out.update({f"{k}_ci": _interval(t) for k, t in boot.items()})
    out["n"] = n
    return out


def paired_difference(
    reference, logits_a, logits_b, *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict:
    """Metric of ``a`` minus metric of ``b`` on the same inputs, with the 95% interval of the difference
    from a joint bootstrap. ``significant[name]`` is True when the interval excludes 0."""
    va, vb = per_input(reference, logits_a), per_input(reference, logits_b)
    n = int(va["top1"].numel())
    point = {k: float(_summaries(va, None)[k] - _summaries(vb, None)[k]) for k in ("top1_agreement", "kl_mean")}
    out = {"difference": point, "n": n}
    if bootstrap:
        idx = _resample(n, bootstrap, seed)
        ba, bb = _summaries(va, idx), _summaries(vb, idx)
        ci = {k: _interval(ba[k] - bb[k]) for k in point}
        out["ci"] = ci
        out["significant"] = {k: bool(c[0] > 0 or c[1] < 0) for k, c in ci.items()}
    return out


@torch.no_grad()
def collect_logits(
    model, inputs: torch.Tensor, *, batch_size: int = 64, progress: bool = False, desc: str = "logits"
) -> torch.Tensor:
    """``model(inputs)`` in batches, as one float32 CPU tensor, in :func:`npuq.evaluation.evaluation_mode`
    (a module in eval mode, its own modes restored afterwards; no autograd)."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError("inputs must be a non-empty batched torch tensor")
    starts = range(0, inputs.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    with evaluation_mode(model):
        return torch.cat([model(inputs[i : i + batch_size]).float().cpu() for i in starts])


__all__ = ["collect_logits", "fidelity", "paired_difference", "per_input"]
