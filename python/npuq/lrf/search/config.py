"""TOML configs of ``npuq lrf search`` and ``npuq lrf iterate``, validated before anything runs.

```toml
name = "mobilenet_v2_search"
seed = 0
strategy = "reinforce"          # reinforce | nsga2 | tpe | random
max_error_increase = 0.01       # the error allowed above the uncompressed model's, for "best"

[task]                          # the registered task and its own options (npuq.lrf.search.tasks)
name = "fashion_mnist"
model = "mobilenet_v2_w0.5_sgd"
dev_size = 2000

[space]
layers = []                     # fnmatch patterns of module paths; empty: every factorizable layer
fractions = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7]
basis = "break_even"            # break_even | full_rank
keep = true                     # offer "keep dense / keep the current rank"
scope = "model"                 # compression of the whole model, or of the searched layers only

[search]                        # npuq lrf search
target = 2.0
budget = 100

[iterate]                       # npuq lrf iterate
targets = [2.0, 3.0]
budget_per_round = 60
single_shot = true

[reinforce]                     # the policy and the reward (docs/lrf_search.md)
batch_size = 8
lr = 1.0
error_scale = 0.01
penalty = 10.0

[optuna]
storage = ""                    # "" in memory; an SQLite path; postgresql://user:password@host/db
study_name = ""
population_size = 20
```

An unknown key, a value of the wrong type or out of range raises :class:`ConfigError` naming the key (the
error of every config of npuq, :class:`npuq.config.ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from npuq._validate import Interval, Options
from npuq.config import ConfigError, check_fields, checked, fill, read_toml, require, value
from npuq.lrf.search.space import BASES, DEFAULT_FRACTIONS, SCOPES
from npuq.registry import SEARCH_STRATEGIES

__all__ = ["ConfigError", "LrfConfig", "fill", "load_config", "parse_config"]

STRATEGIES = SEARCH_STRATEGIES.names()  # declared in the registry: nothing is imported for them


@dataclass
class SpaceSpec:
    layers: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    basis: str = checked("break_even", Options(BASES))
    keep: bool = True
    scope: str = checked("model", Options(SCOPES))

    def __post_init__(self):
        check_fields(self)
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"fractions must each be in (0, 1], got {bad}")
        if len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions must be distinct, got {self.fractions}")
        if not self.fractions and not self.keep:
            raise ValueError("fractions is empty and keep is false: no choice left")


@dataclass
class SearchSpec:
    target: float = checked(2.0, Interval(float, 1, None))  # a compression
    budget: int = checked(100, Interval(int, 1, None))  # candidates

    def __post_init__(self):
        check_fields(self)


@dataclass
class IterateSpec:
    targets: list[float] = field(default_factory=lambda: [2.0, 3.0])
    budget_per_round: int = checked(60, Interval(int, 1, None))  # candidates
    single_shot: bool = True

    def __post_init__(self):
        check_fields(self)
        if not self.targets or any(t < 1 for t in self.targets):
            raise ValueError(f"targets must be a non-empty list of compressions >= 1, got {self.targets}")
        if any(b <= a for a, b in zip(self.targets, self.targets[1:])):
            raise ValueError(f"targets must increase from round to round, got {self.targets}")


@dataclass
class ReinforceSpec:
    batch_size: int = 8
    lr: float = 1.0
    hidden: int = 32
    entropy_weight: float = 0.02
    baseline_decay: float = 0.8
    autoregressive: bool = False
    keep_prior: float | str = 0.75
    error_scale: float = 0.01
    penalty: float = 10.0
    bonus: float = 0.5
    error_cap: float = 0.2

    def __post_init__(self):
        self.policy()
        self.reward(1.0)

    def policy(self):
        from npuq.lrf.search.reinforce import ReinforceConfig

        return ReinforceConfig(
            self.batch_size,
            self.lr,
            self.hidden,
            self.entropy_weight,
            self.baseline_decay,
            self.autoregressive,
            self.keep_prior,
        )

    def reward(self, target: float):
        from npuq.lrf.search.evaluation import RewardConfig

        return RewardConfig(target, self.error_scale, self.penalty, self.bonus, self.error_cap)


@dataclass
class OptunaSpec:
    storage: str = ""
    study_name: str = ""
    population_size: int = checked(20, Interval(int, 2, None))
    heartbeat_interval: int = checked(5, Interval(int, 1, None))  # seconds
    grace_period: int = 20
    max_retry: int = checked(3, Interval(int, 0, None))
    connect_timeout: float = checked(10.0, Interval(float, 0, None, closed="neither"))  # seconds
    poll_interval: float = checked(1.0, Interval(float, 0, None, closed="neither"))  # seconds
    keep_prior: float = checked(0.75, Interval(float, 0, 1, closed="left"))

    def __post_init__(self):
        check_fields(self)
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period must exceed heartbeat_interval ({self.heartbeat_interval} s), got {self.grace_period}"
            )

    def options(self, worker_id: int | None = None) -> dict:
        shared = bool(self.storage)
        return {
            "storage": self.storage or None,
            "study_name": self.study_name or None,
            "population_size": self.population_size,
            "heartbeat_interval": self.heartbeat_interval if shared else None,
            "grace_period": self.grace_period if shared else None,
            "max_retry": self.max_retry,
            "connect_timeout": self.connect_timeout,
            "poll_interval": self.poll_interval,
            "worker_id": worker_id,
            "keep_prior": self.keep_prior,
        }


@dataclass
class LrfConfig:
    name: str = "lrf"
    seed: int = 0
    strategy: str = "reinforce"
    max_error_increase: float = 0.01
    task: str = "fashion_mnist"
    task_options: dict = field(default_factory=dict)
    space: SpaceSpec = field(default_factory=SpaceSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    iterate: IterateSpec = field(default_factory=IterateSpec)
    reinforce: ReinforceSpec = field(default_factory=ReinforceSpec)
    optuna: OptunaSpec = field(default_factory=OptunaSpec)
    source: str = "config"

    def make_task(self):
        from npuq.lrf.search.tasks import make_task

        return make_task(self.task, self.task_options, f"{self.source}: task")


_TABLES = {
    "space": SpaceSpec,
    "search": SearchSpec,
    "iterate": IterateSpec,
    "reinforce": ReinforceSpec,
    "optuna": OptunaSpec,
}
_SCALARS = {"name": str, "seed": int, "strategy": str, "max_error_increase": float}


def parse_config(table: dict, source: str = "config") -> LrfConfig:
    """Validate a config table (from TOML) into an :class:`LrfConfig`; the task's options are checked by
    building the task's option dataclass."""
    known = sorted([*_SCALARS, *_TABLES, "task"])
    for key in table:
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{key}'; known: {', '.join(known)}")
    config = LrfConfig(source=source)
    for key, kind in _SCALARS.items():
        if key in table:
            setattr(config, key, value(table[key], kind, f"{source}: {key}"))
    require(config.strategy, f"{source}: strategy", Options(STRATEGIES))
    require(config.max_error_increase, f"{source}: max_error_increase", Interval(float, 0, None))
    for key, cls in _TABLES.items():
        if key in table:
            setattr(config, key, fill(cls, table[key], f"{source}: {key}"))
    task = table.get("task", {})
    if not isinstance(task, dict):
        raise ConfigError(f"{source}: task must be a table ([task] with name = ...), got {type(task).__name__}")
    task = dict(task)
    config.task = value(task.pop("name", config.task), str, f"{source}: task.name")
    config.task_options = task
    config.make_task()  # checks the name and the options now, loads nothing
    return config


def load_config(path: str | Path) -> LrfConfig:
    """Read and validate a TOML config file."""
    return parse_config(read_toml(path), str(path))
