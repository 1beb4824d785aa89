"""One search at one target with a named strategy, looked up in :data:`npuq.registry.SEARCH_STRATEGIES`.

A strategy is registered where it is implemented (:mod:`~npuq.lrf.search.reinforce`,
:mod:`~npuq.lrf.search.optuna_search`) as a function called with the evaluator and the keyword arguments
of :func:`search` (it ignores those meant for other strategies) and returning a
:class:`~npuq.lrf.search.result.SearchResult`. Its name must also be in the registry's declared names, so
that the command line offers it without importing torch or Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from npuq.registry import SEARCH_STRATEGIES

if TYPE_CHECKING:
    from npuq.lrf.search.evaluation import Evaluator, RewardConfig
    from npuq.lrf.search.reinforce import ReinforceConfig
    from npuq.lrf.search.result import SearchResult

__all__ = ["STRATEGIES", "search"]

STRATEGIES = SEARCH_STRATEGIES.names()


def search(
    evaluator: Evaluator,
    *,
    strategy: str = "reinforce",
    target: float,
    budget: int,
    max_error_increase: float = 0.01,
    seed: int = 0,
    progress: bool = True,
    desc: str | None = None,
    reinforce: ReinforceConfig | None = None,
    reward_config: RewardConfig | None = None,
    optuna_options: dict | None = None,
) -> SearchResult:
    """One search of ``budget`` candidates at ``target`` compression with ``strategy``: ``"reinforce"``, or an
    Optuna sampler (``"nsga2"``, ``"tpe"``, ``"random"``; ``optuna_options`` go to
    :func:`~npuq.lrf.search.optuna_search.optuna_search`)."""
    if strategy not in SEARCH_STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    run = SEARCH_STRATEGIES.get(strategy)
    return run(
        evaluator,
        strategy=strategy,
        target=target,
        budget=budget,
        max_error_increase=max_error_increase,
        seed=seed,
        progress=progress,
        desc=desc,
        reinforce=reinforce,
        reward_config=reward_config,
        optuna_options=optuna_options,
    )
