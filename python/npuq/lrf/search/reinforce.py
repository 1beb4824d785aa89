"""A reinforcement-learning rank search in the spirit of ShrinkML (Interspeech 2019).

The policy walks over the matrices of the :class:`~npuq.lrf.search.space.SearchSpace` in model order. At
matrix l an LSTM cell reads the matrix's features (log shape, position, share of the parameters, rank
cap, layer kind; :meth:`SearchSpace.features`) -- with ``autoregressive=True`` also an embedding of the
choice made at matrix l-1 -- and a linear head plus a per-matrix logit offset give a categorical
distribution over the rank choices. A candidate is one pass: a choice per matrix.

Training is REINFORCE: each step draws ``batch_size`` candidates, evaluates them (memoized), turns
(error, compression) into the reward ``R`` of :func:`~npuq.lrf.search.evaluation.reward`, and follows the
gradient of ``A * log p(candidate) + entropy_weight * H`` with the advantage ``A = (R - b) / max(s, 1)``:
``b`` is an exponential moving average of the rewards seen so far (a baseline that lowers the variance of
the estimate without biasing it), ``s`` a moving spread of the rewards around it, and the entropy bonus
``H`` keeps the policy from collapsing on its first good guess. The head starts at zero and the offsets
give "keep" the probability ``keep_prior`` (the other choices equal shares): the first candidates compress
a random quarter of the matrices by default, rather than all of them.

Everything random comes from generators seeded with ``seed``: the same seed, space and errors give the
same candidates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from npuq.lrf.search.evaluation import Evaluator, RewardConfig, reward
from npuq.lrf.search.result import SearchResult
from npuq.registry import SEARCH_STRATEGIES

__all__ = ["Policy", "ReinforceConfig", "reinforce_search"]


@dataclass(frozen=True)
class ReinforceConfig:
    """``batch_size`` candidates per policy update, SGD with ``lr``, an LSTM of ``hidden`` units,
    ``entropy_weight`` on the entropy bonus, ``baseline_decay`` of the moving-average baseline,
    ``autoregressive``: feed each choice to the next step; ``keep_prior``: the initial probability of "keep"
    for every matrix (the other choices share the rest evenly; 0: all choices equally likely), or ``"auto"``:
    start where the mean size of the candidates is the target's
    (:meth:`~npuq.lrf.search.space.SearchSpace.start_probabilities`)."""

    batch_size: int = 8
    lr: float = 1.0
    hidden: int = 32
    entropy_weight: float = 0.02
    baseline_decay: float = 0.8
    autoregressive: bool = False
    keep_prior: float | str = 0.75

    def __post_init__(self):
        for name in ("batch_size", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"reinforce {name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"reinforce lr must be > 0, got {self.lr!r}")
        if not (math.isfinite(self.entropy_weight) and self.entropy_weight >= 0):
            raise ValueError(f"reinforce entropy_weight must be >= 0, got {self.entropy_weight!r}")
        if self.keep_prior != "auto" and not (
            isinstance(self.keep_prior, (int, float))
            and not isinstance(self.keep_prior, bool)
            and 0 <= self.keep_prior < 1
        ):
            raise ValueError(f"reinforce keep_prior must be in [0, 1) or 'auto', got {self.keep_prior!r}")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError(f"reinforce baseline_decay must be in [0, 1), got {self.baseline_decay!r}")


class Policy(nn.Module):
    """An autoregressive LSTM policy over the matrices of a search space."""

    def __init__(
        self,
        n_features: int,
        n_choices: int,
        n_slots: int,
        hidden: int = 32,
        autoregressive: bool = False,
        keep_prior: float = 0.0,
        start: list[float] | None = None,
    ):
        super().__init__()
        self.n_choices = n_choices
        self.autoregressive = autoregressive
        self.inp = nn.Linear(n_features, hidden)
        # matrices of equal shape have nearly equal features, and a head shared by all matrices moves their
        # choices together; a logit offset of their own lets the policy learn that one of them is sensitive
        # and another is not
        self.slot_logits = nn.Parameter(torch.zeros(n_slots, n_choices))
        if keep_prior > 0 and n_choices > 1:
            # "keep" is the last choice; starting near the uncompressed model matters when most random
            # candidates (every layer compressed) are useless, as in a small CNN
            with torch.no_grad():
                self.slot_logits[:, -1] = math.log(keep_prior * (n_choices - 1) / (1 - keep_prior))
        if start is not None:
            # explicit starting probabilities (the same for every matrix) override keep_prior
            if len(start) != n_choices or min(start) < 0:
                raise ValueError(f"start must hold {n_choices} probabilities >= 0, got {start}")
            with torch.no_grad():
                self.slot_logits.copy_(
                    torch.log(torch.tensor(start, dtype=torch.float32).clamp_min(1e-6)).expand(n_slots, n_choices)
                )
        # index n_choices stands for "no previous choice" at the first matrix
        self.previous = nn.Embedding(n_choices + 1, hidden)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.head = nn.Linear(hidden, n_choices)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self,
        features: torch.Tensor,
        batch: int,
        *,
        generator: torch.Generator | None = None,
        actions: torch.Tensor | None = None,
        greedy: bool = False,
    ):
        """Draw ``batch`` candidates (or score the given ``actions``, batch x slots): ``(actions,
        log-probability per candidate, mean entropy per candidate)``."""
        h = features.new_zeros(batch, self.cell.hidden_size)
        c = torch.zeros_like(h)
        prev = torch.full((batch,), self.n_choices, dtype=torch.long)
        chosen, log_p, entropy = [], features.new_zeros(batch), features.new_zeros(batch)
        for slot in range(features.shape[0]):
            x = self.inp(features[slot]).expand(batch, -1)
            if self.autoregressive:
                x = x + self.previous(prev)
            x = torch.relu(x)
            h, c = self.cell(x, (h, c))
            logits = torch.log_softmax(self.head(h) + self.slot_logits[slot], dim=-1)
            if actions is not None:
                action = actions[:, slot]
            elif greedy:
                action = logits.argmax(dim=-1)
            else:
                action = torch.multinomial(logits.exp(), 1, generator=generator).squeeze(1)
            log_p = log_p + logits.gather(1, action[:, None]).squeeze(1)
            entropy = entropy - (logits.exp() * logits).sum(dim=-1)
            chosen.append(action)
            prev = action
        return torch.stack(chosen, dim=1), log_p, entropy / features.shape[0]


def reinforce_search(
    evaluator: Evaluator,
    *,
    target: float,
    budget: int,
    max_error_increase: float = 0.01,
    config: ReinforceConfig | None = None,
    reward_config: RewardConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str | None = None,
) -> SearchResult:
    """Train a :class:`Policy` with REINFORCE on ``budget`` candidates of ``evaluator.space``.

    ``target``: the compression aimed at (the reward's ``c*``; ``reward_config.target`` is replaced by it);
    ``max_error_increase``: the error allowed above the uncompressed model's for :attr:`SearchResult.best`.
    The last candidate is the trained policy's most likely one. ``result.extra["rewards"]`` holds the
    reward of every candidate in order.
    """
    from tqdm.auto import tqdm

    config = config or ReinforceConfig()
    reward_config = RewardConfig(**{**vars(reward_config or RewardConfig()), "target": float(target)})
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an integer >= 1 (candidates), got {budget!r}")
    space = evaluator.space
    start = time.perf_counter()
    evaluations_before = evaluator.evaluations
    baseline_error = evaluator.baseline_error
    features = space.features()
    keep_prior = config.keep_prior if space.keep else 0.0
    start_probabilities = space.start_probabilities(float(target)) if keep_prior == "auto" else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = Policy(
            features.shape[1],
            space.n_choices,
            len(space),
            config.hidden,
            config.autoregressive,
            0.0 if start_probabilities else keep_prior,
            start=start_probabilities,
        )
    # plain SGD on purpose: Adam rescales every step to about the same size, so a batch whose rewards hardly
    # differ (all candidates equally bad) would move the policy as far as an informative one
    optimizer = torch.optim.SGD(policy.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    history, rewards = [], []
    moving, spread = None, 1.0
    bar = tqdm(total=budget, desc=desc or f"reinforce x{target:g}", disable=not progress, leave=False)

    def score(actions, step):
        out = []
        for row in actions.tolist():
            record = evaluator(tuple(row), strategy="reinforce", step=step)
            value = reward(record.error, record.compression, baseline_error, reward_config)
            history.append(record)
            rewards.append(value)
            out.append(value)
            bar.update(1)
        best = max(rewards)
        bar.set_postfix(reward=f"{best:.2f}", evals=evaluator.evaluations - evaluations_before)
        return out

    step = 0
    while len(history) < budget - 1:
        batch = min(config.batch_size, budget - 1 - len(history))
        with torch.no_grad():
            actions, _, _ = policy(features, batch, generator=generator)
        values = torch.tensor(score(actions, step), dtype=torch.float32)
        if moving is None:
            moving, spread = float(values.mean()), float(values.std()) if batch > 1 else 1.0
        advantages = torch.empty_like(values)
        for i, value in enumerate(values.tolist()):
            # divided by a moving spread of the rewards, so that the step size does not depend on the reward's
            # units; the spread is floored at one unit (an error change of error_scale), so that a batch of
            # nearly equal rewards is not blown up into a large step
            advantages[i] = (value - moving) / max(spread, 1.0)
            decay = config.baseline_decay
            spread = math.sqrt(decay * spread**2 + (1 - decay) * (value - moving) ** 2)
            moving = decay * moving + (1 - decay) * value
        _, log_p, entropy = policy(features, batch, actions=actions)
        loss = -(advantages * log_p).mean() - config.entropy_weight * entropy.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    with torch.no_grad():
        greedy, _, _ = policy(features, 1, greedy=True)
    score(greedy, step)
    bar.close()
    result = SearchResult(
        "reinforce",
        float(target),
        baseline_error,
        baseline_error + max_error_increase,
        history,
        evaluator.evaluations - evaluations_before,
        time.perf_counter() - start,
    )
    result.extra["rewards"] = rewards
    result.extra["reward"] = dict(vars(reward_config))
    result.extra["policy"] = {**vars(config), "start_probabilities": start_probabilities}
    return result


@SEARCH_STRATEGIES.register("reinforce")
def _strategy(
    evaluator: Evaluator,
    *,
    target: float,
    budget: int,
    max_error_increase: float,
    seed: int,
    progress: bool,
    desc: str | None,
    reinforce: ReinforceConfig | None = None,
    reward_config: RewardConfig | None = None,
    **_,
) -> SearchResult:
    """The ``reinforce`` strategy of :func:`npuq.lrf.search.search`."""
    return reinforce_search(
        evaluator,
        target=target,
        budget=budget,
        max_error_increase=max_error_increase,
        config=reinforce,
        reward_config=reward_config,
        seed=seed,
        progress=progress,
        desc=desc,
    )
