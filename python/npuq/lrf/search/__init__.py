"""Automatic rank search for :mod:`npuq.lrf`: which rank each layer gets, traded against the error.

* :mod:`~npuq.lrf.search.space`: :class:`SearchSpace` (per-matrix rank choices over one SVD per matrix);
* :mod:`~npuq.lrf.search.evaluation`: :class:`Evaluator` (memoized ``evaluate(model) -> error``), the reward;
* :mod:`~npuq.lrf.search.reinforce`: :func:`reinforce_search` (an LSTM policy trained with REINFORCE);
* :mod:`~npuq.lrf.search.optuna_search`: :func:`optuna_search` (NSGA-II / TPE, shareable between workers
  through a database);
* :mod:`~npuq.lrf.search.strategies`: :func:`search` (one search with a strategy of
  :data:`npuq.registry.SEARCH_STRATEGIES`, ``STRATEGIES`` its names);
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
from npuq.lrf.search.strategies import STRATEGIES, search

__all__ = [
    "DEFAULT_FRACTIONS",
    "KEEP",
    "STRATEGIES",
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
