"""A multi-objective rank search with Optuna: minimize (error, size) with NSGA-II (or TPE, or random).

Each trial chooses one index per matrix of the :class:`~npuq.lrf.search.space.SearchSpace`
(``trial.suggest_int(slot.name, 0, n_choices - 1)``: the choices are ordered by rank, which TPE and
NSGA-II's crossover can use), builds the candidate, and returns ``(error, size)``. The study's Pareto
front is the answer; :attr:`SearchResult.at_target` picks the lowest error at the target compression.

Several processes, on one machine or many, can work on one study: give them the same ``storage`` (an
SQLite file for one machine, ``postgresql://user:password@host/db`` for several) and ``study_name``; each
loads the study if it exists. ``n_trials`` is the number of *completed* trials the study should end with,
whoever runs them. A worker killed during a trial stops sending heartbeats; after ``grace_period`` seconds
another worker marks that trial failed, and the retry callback enqueues it again with the same parameters.
Workers that find every remaining trial running elsewhere wait (polling) instead of leaving, so that a trial
of a dead worker is still retried.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import socket
import time
import warnings
from pathlib import Path

from npuq.lrf.search.evaluation import Evaluator, Record
from npuq.lrf.search.result import SearchResult
from npuq.registry import SEARCH_STRATEGIES

__all__ = ["SAMPLERS", "StorageError", "open_storage", "optuna_search", "redact"]

_SQLITE_MAGIC = b"SQLite format 3\x00"


class StorageError(RuntimeError):
    """The study storage cannot be opened or used: unreachable server, missing driver, corrupt file, or a
    study made for another search."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def _optuna():
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(
            "the Optuna rank search needs optuna: pip install 'npuq[lrf]' (or pip install optuna)"
        ) from exc
    return optuna


def _storage_url(storage: str) -> str:
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().resolve()
    if path.is_dir():
        raise StorageError(f"study storage {storage!r} is a folder; give an SQLite file path or a database URL")
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
        if head != _SQLITE_MAGIC:
            raise StorageError(
                f"study storage {str(path)!r} exists but is not an SQLite database (corrupt, or "
                "another kind of file); move it away or give another path"
            )
    if not path.parent.is_dir():
        raise StorageError(f"study storage {str(path)!r}: folder {str(path.parent)!r} does not exist")
    return f"sqlite:///{path}"


def _postgres_driver(url: str) -> str:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the psycopg2-binary wheel is the one npuq's extra
    # installs, so name it unless a driver is given or only psycopg 3 is there
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def _rdb_storage(optuna, url: str, engine: dict, kwargs: dict):
    # workers started together on a fresh database all try to create Optuna's tables; the losers of that race
    # get a duplicate-object error from the server, and find the tables there when they try again
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna flags the heartbeat as experimental in some versions
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
        except Exception as exc:
            text = str(exc).lower()
            racing = "already exists" in text or "duplicate key" in text or "uniqueviolation" in text
            if not racing or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def open_storage(
    storage: str | None,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    connect_timeout: float = 10.0,
):
    """An Optuna storage: ``None`` or ``""`` in memory; a URL (``sqlite:///study.db``,
    ``postgresql://user:password@host:5432/db``, ...) or an SQLite file path as an ``RDBStorage``.

    With ``heartbeat_interval`` (seconds) each running trial records a heartbeat; a running trial without
    one for ``grace_period`` seconds (default: 4 heartbeats) is failed by the next worker that starts a
    trial, and enqueued again up to ``max_retry`` times. ``connect_timeout`` bounds how long an unreachable
    server is waited for. Raises :class:`StorageError` naming the storage (password hidden) and the reason.
    """
    optuna = _optuna()
    if storage is None or storage == "":
        return optuna.storages.InMemoryStorage()
    if not isinstance(storage, str):
        raise TypeError(f"storage must be a database URL or an SQLite file path, got {type(storage).__name__}")
    url = _postgres_driver(_storage_url(storage))
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    timeout = max(1, int(math.ceil(connect_timeout)))
    if scheme == "sqlite":
        engine = {"connect_args": {"timeout": timeout}}
    elif scheme in ("postgresql", "postgres", "mysql"):
        engine = {"connect_args": {"connect_timeout": timeout}, "pool_pre_ping": True}
    else:
        engine = {}
    kwargs = {}
    if heartbeat_interval is not None:
        if heartbeat_interval < 1:
            raise ValueError(f"heartbeat_interval must be >= 1 second, got {heartbeat_interval!r}")
        kwargs["heartbeat_interval"] = int(heartbeat_interval)
        kwargs["grace_period"] = int(grace_period if grace_period is not None else 4 * heartbeat_interval)
        # the retry callback and its argument were renamed in Optuna 4.9; take whichever this version has
        retry_class = (
            getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
            or optuna.storages.RetryFailedTrialCallback
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flagged experimental
            retry = retry_class(max_retry=max_retry)
        params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
        name = "heartbeat_stale_trial_callback"
        if name not in params:
            name = "failed_trial_callback"
        kwargs[name] = retry
    try:
        return _rdb_storage(optuna, url, engine, kwargs)
    except ImportError as exc:  # Optuna wraps the driver's ModuleNotFoundError in a plain ImportError
        raise StorageError(
            f"study storage {redact(url)}: the database driver is not installed ({exc}); for "
            "PostgreSQL: pip install psycopg2-binary (or 'npuq[lrf]')"
        ) from exc
    except Exception as exc:  # SQLAlchemy and the drivers raise many types; all mean "cannot use it"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open the study storage {redact(url)}: {reason}") from exc


# ------------------------------------------------------------------------------------- the samplers
_FACTORIES: dict = {}


def _strategy(
    evaluator: Evaluator,
    *,
    strategy: str,
    target: float,
    budget: int,
    max_error_increase: float,
    seed: int,
    progress: bool,
    desc: str | None,
    optuna_options: dict | None = None,
    **_,
) -> SearchResult:
    """An Optuna sampler as a strategy of :func:`npuq.lrf.search.search` (the strategy names the sampler)."""
    return optuna_search(
        evaluator,
        target=target,
        n_trials=budget,
        sampler=strategy,
        seed=seed,
        max_error_increase=max_error_increase,
        progress=progress,
        desc=desc,
        **(optuna_options or {}),
    )


def _sampler(name: str):
    """Decorator: ``factory(optuna, seed, population_size) -> sampler`` becomes sampler and search strategy
    ``name``."""

    def add(factory):
        _FACTORIES[name] = factory
        SEARCH_STRATEGIES.add(name, _strategy, sampler=True)
        return factory

    return add


@_sampler("nsga2")
def _nsga2(optuna, seed: int | None, population_size: int):
    return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)


@_sampler("tpe")
def _tpe(optuna, seed: int | None, population_size: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, population_size))


@_sampler("random")
def _random(optuna, seed: int | None, population_size: int):
    return optuna.samplers.RandomSampler(seed=seed)


SAMPLERS = tuple(_FACTORIES)


def _make_sampler(optuna, name: str, seed: int | None, population_size: int):
    if name not in _FACTORIES:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
    return _FACTORIES[name](optuna, seed, population_size)


def _space_digest(evaluator: Evaluator) -> str:
    description = evaluator.space.describe()
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def _fail_stale(optuna, study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def optuna_search(
    evaluator: Evaluator,
    *,
    target: float,
    n_trials: int,
    sampler: str = "nsga2",
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    population_size: int = 20,
    max_error_increase: float = 0.01,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 3,
    connect_timeout: float = 10.0,
    worker_id: int | None = None,
    poll_interval: float = 1.0,
    keep_prior: float = 0.75,
    progress: bool = True,
    desc: str | None = None,
) -> SearchResult:
    """Run (or join) an Optuna study over ``evaluator.space`` until it holds ``n_trials`` completed trials.

    ``storage``/``study_name``: see :func:`open_storage`; a study of that name is loaded if it exists (its
    directions and search space must match this one: :class:`StorageError` otherwise). With a database
    storage, ``heartbeat_interval`` defaults to 5 s. ``worker_id`` offsets the sampler's seed so that workers
    do not propose the same trials (default: 0 in memory, else derived from host name and process id).
    ``keep_prior``: a new study starts with ``population_size`` (at most ``n_trials``) enqueued trials in which
    each matrix keeps its rank with this probability (else a uniform fraction): uniform random candidates
    compress every layer, which in a small CNN leaves nothing but chance-level errors to learn from (0: no
    enqueued trials).
    The returned history holds every completed trial of the study (other workers' too).
    """
    optuna = _optuna()
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 2:
        raise ValueError(f"population_size must be an integer >= 2, got {population_size!r}")
    shared = storage not in (None, "")
    if shared and heartbeat_interval is None:
        heartbeat_interval = 5
    store = open_storage(
        storage,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_retry=max_retry,
        connect_timeout=connect_timeout,
    )
    if worker_id is None:
        worker_id = (
            0
            if not shared
            else int(hashlib.sha256(f"{socket.gethostname()}:{os.getpid()}".encode()).hexdigest()[:6], 16)
        )
    space = evaluator.space
    start = time.perf_counter()
    evaluations_before = evaluator.evaluations
    chosen_sampler = _make_sampler(optuna, sampler, (seed + 7919 * worker_id) % 2**32, population_size)
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=store,
            directions=["minimize", "minimize"],
            sampler=chosen_sampler,
            load_if_exists=True,
        )
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot create or load study {study_name!r}: {exc}") from exc
    if [d.name for d in study.directions] != ["MINIMIZE", "MINIMIZE"]:
        raise StorageError(
            f"study {study.study_name!r} exists with directions {[d.name for d in study.directions]}; "
            "a rank search needs (minimize error, minimize size): use another study_name"
        )
    digest = _space_digest(evaluator)
    attrs = study.user_attrs
    if "space" in attrs and attrs["space"] != digest:
        raise StorageError(
            f"study {study.study_name!r} was made for another search space (layers, choices or "
            "model differ); use another study_name"
        )
    if "space" not in attrs:
        study.set_user_attr("space", digest)
        study.set_user_attr("labels", list(space.labels))
    # the uncompressed model is evaluated by one worker and shared through the study
    baseline = study.user_attrs.get("baseline_error")
    if baseline is None:
        baseline = evaluator.baseline_error
        study.set_user_attr("baseline_error", baseline)
    elif evaluator._baseline is None:
        evaluator._baseline = float(baseline)
    states = optuna.trial.TrialState
    names = [slot.name for slot in space.slots]
    highest = space.n_choices - 1
    if keep_prior > 0 and space.keep and highest > 0 and not study.get_trials(deepcopy=False):
        import numpy as np

        rng = np.random.default_rng(seed)
        for _ in range(min(population_size, n_trials)):
            keep = rng.random(len(names)) < keep_prior
            picks = rng.integers(0, highest, len(names))
            study.enqueue_trial({name: int(highest if k else p) for name, k, p in zip(names, keep, picks)})

    def objective(trial):
        candidate = tuple(trial.suggest_int(name, 0, highest) for name in names)
        earlier = [
            t
            for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.RUNNING))
            if t.number < trial.number
        ]
        if len(earlier) >= n_trials:
            # another worker asked for a trial at the same moment and the study is full: give this one up
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("the study already has its trials")
        key = json.dumps(space.key(candidate))
        if evaluator.known(candidate) is None:
            for done in study.get_trials(deepcopy=False, states=(states.COMPLETE,)):
                if done.user_attrs.get("key") == key:
                    evaluator.remember(candidate, done.values[0])
                    break
        record = evaluator(candidate, strategy=sampler, trial=trial.number)
        trial.set_user_attr("key", key)
        trial.set_user_attr("ranks", record.ranks)
        trial.set_user_attr("compression", record.compression)
        return record.error, record.size

    from tqdm.auto import tqdm

    bar = tqdm(total=n_trials, desc=desc or f"{sampler} x{target:g}", disable=not progress, leave=False)
    try:
        while True:
            if heartbeat_interval is not None:
                _fail_stale(optuna, study)
            trials = study.get_trials(deepcopy=False)
            count = {
                state: sum(t.state == state for t in trials)
                for state in (states.COMPLETE, states.RUNNING, states.WAITING)
            }
            bar.n = min(count[states.COMPLETE], n_trials)
            bar.refresh()
            if count[states.COMPLETE] >= n_trials:
                break
            if count[states.COMPLETE] + count[states.RUNNING] >= n_trials and count[states.WAITING] == 0:
                # the last trials run elsewhere; stay until they finish, or fail and come back to be retried
                time.sleep(poll_interval)
                continue
            study.optimize(objective, n_trials=1, catch=())
    finally:
        bar.close()
    history = []
    for trial in study.get_trials(deepcopy=False, states=(states.COMPLETE,)):
        candidate = tuple(int(trial.params[name]) for name in names)
        history.append(
            Record(
                candidate,
                trial.user_attrs.get("ranks", space.ranks(candidate)),
                int(trial.values[1]),
                float(trial.user_attrs.get("compression", space.reference_size / trial.values[1])),
                float(trial.values[0]),
                False,
                {"strategy": sampler, "trial": trial.number},
            )
        )
    result = SearchResult(
        sampler,
        float(target),
        float(baseline),
        float(baseline) + max_error_increase,
        history,
        evaluator.evaluations - evaluations_before,
        time.perf_counter() - start,
    )
    result.extra.update(
        study_name=study.study_name,
        storage=redact(storage) if shared else "memory",
        front_trials=sorted(t.number for t in study.best_trials),
    )
    return result
