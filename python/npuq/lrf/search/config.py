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

from npuq.config import ConfigError, fill, read_toml, value
from npuq.lrf.search.space import BASES, DEFAULT_FRACTIONS, SCOPES
from npuq.registry import SEARCH_STRATEGIES

__all__ = ["ConfigError", "LrfConfig", "fill", "load_config", "parse_config"]

STRATEGIES = SEARCH_STRATEGIES.names()  # declared in the registry: nothing is imported for them


@dataclass
class SpaceSpec:
    layers: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    basis: str = "break_even"
    keep: bool = True
    scope: str = "model"

    def __post_init__(self):
        if self.basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {self.basis!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"fractions must each be in (0, 1], got {bad}")
        if len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions must be distinct, got {self.fractions}")
        if not self.fractions and not self.keep:
            raise ValueError("fractions is empty and keep is false: no choice left")


@dataclass
class SearchSpec:
    target: float = 2.0
    budget: int = 100

    def __post_init__(self):
        if self.target < 1:
            raise ValueError(f"target must be a compression >= 1, got {self.target}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1 candidate, got {self.budget}")


@dataclass
class IterateSpec:
    targets: list[float] = field(default_factory=lambda: [2.0, 3.0])
    budget_per_round: int = 60
    single_shot: bool = True

    def __post_init__(self):
        if not self.targets or any(t < 1 for t in self.targets):
            raise ValueError(f"targets must be a non-empty list of compressions >= 1, got {self.targets}")
        if any(b <= a for a, b in zip(self.targets, self.targets[1:])):
            raise ValueError(f"targets must increase from round to round, got {self.targets}")
        if self.budget_per_round < 1:
            raise ValueError(f"budget_per_round must be >= 1 candidate, got {self.budget_per_round}")


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
    population_size: int = 20
    heartbeat_interval: int = 5
    grace_period: int = 20
    max_retry: int = 3
    connect_timeout: float = 10.0
    poll_interval: float = 1.0
    keep_prior: float = 0.75

    def __post_init__(self):
        if not 0 <= self.keep_prior < 1:
            raise ValueError(f"keep_prior must be in [0, 1), got {self.keep_prior}")
        if self.population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {self.population_size}")
        if self.heartbeat_interval < 1:
            raise ValueError(f"heartbeat_interval must be >= 1 second, got {self.heartbeat_interval}")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period must exceed heartbeat_interval ({self.heartbeat_interval} s), got {self.grace_period}"
            )
        if self.max_retry < 0:
            raise ValueError(f"max_retry must be >= 0, got {self.max_retry}")
        if self.connect_timeout <= 0 or self.poll_interval <= 0:
            raise ValueError("connect_timeout and poll_interval must be > 0 seconds")

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
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"{source}: strategy must be one of {STRATEGIES}, got {config.strategy!r}")
    if config.max_error_increase < 0:
        raise ConfigError(f"{source}: max_error_increase must be >= 0, got {config.max_error_increase}")
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
