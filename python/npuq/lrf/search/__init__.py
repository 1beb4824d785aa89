"""Automatic rank search for :mod:`npuq.lrf`: which rank each layer gets, traded against the error.

* :mod:`~npuq.lrf.search.space`: :class:`SearchSpace` (per-matrix rank choices over one SVD per matrix);
* :mod:`~npuq.lrf.search.evaluation`: :class:`Evaluator` (memoized ``evaluate(model) -> error``), the reward;
* :mod:`~npuq.lrf.search.reinforce`: :func:`reinforce_search` (an LSTM policy trained with REINFORCE);
* :mod:`~npuq.lrf.search.optuna_search`: :func:`optuna_search` (NSGA-II / TPE, shareable between workers
  through a database);
* :mod:`~npuq.lrf.search.iterate`: :func:`iterate` (search, fine-tune, search again at a stricter target);
* :mod:`~npuq.lrf.search.tasks` and :mod:`~npuq.lrf.search.config`: what the ``npuq lrf`` commands run.

See ``docs/lrf_search.md``.
"""

from __future__ import annotations

from npuq.lrf.search.evaluation import Evaluator, Record, RewardConfig, reward
from npuq.lrf.search.iterate import iterate, plot_pareto
from npuq.lrf.search.optuna_search import StorageError, open_storage, optuna_search
from npuq.lrf.search.reinforce import ReinforceConfig, reinforce_search
from npuq.lrf.search.result import SearchResult, pareto_front
from npuq.lrf.search.space import DEFAULT_FRACTIONS, KEEP, SearchSpace, Slot, densify

__all__ = [
    "DEFAULT_FRACTIONS",
    "KEEP",
    "Evaluator",
    "Record",
    "ReinforceConfig",
    "RewardConfig",
    "SearchResult",
    "SearchSpace",
    "Slot",
    "StorageError",
    "densify",
    "iterate",
    "open_storage",
    "optuna_search",
    "pareto_front",
    "plot_pareto",
    "reinforce_search",
    "reward",
    "search",
]

STRATEGIES = ("reinforce", "nsga2", "tpe", "random")


def search(evaluator: Evaluator, *, strategy: str = "reinforce", target: float, budget: int,
           max_error_increase: float = 0.01, seed: int = 0, progress: bool = True, desc: str | None = None,
           reinforce: ReinforceConfig | None = None, reward_config: RewardConfig | None = None,
           optuna_options: dict | None = None) -> SearchResult:
    """One search of ``budget`` candidates at ``target`` compression with ``strategy``: ``"reinforce"``, or an
    Optuna sampler (``"nsga2"``, ``"tpe"``, ``"random"``; ``optuna_options`` go to :func:`optuna_search`)."""
    if strategy == "reinforce":
        return reinforce_search(evaluator, target=target, budget=budget, max_error_increase=max_error_increase,
                                config=reinforce, reward_config=reward_config, seed=seed, progress=progress, desc=desc)
    if strategy in STRATEGIES:
        return optuna_search(evaluator, target=target, n_trials=budget, sampler=strategy, seed=seed,
                             max_error_increase=max_error_increase, progress=progress, desc=desc,
                             **(optuna_options or {}))
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")

