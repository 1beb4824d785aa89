"""The extension points of npuq: one registry per kind of pluggable thing, in a module that imports
nothing else (so every part of the package can reach a registry without an import cycle).

A registry maps names to implementations. Implementations register themselves with a decorator where they
are defined::

    from npuq.registry import DISTILL_LOSSES

    @DISTILL_LOSSES.register("kd")
    class KDLoss(nn.Module): ...

The modules that define a registry's entries are its *providers*; they are imported (by name, with
:mod:`importlib`) the first time the registry is asked for an entry, so looking a name up never depends on
what the caller happened to import before. A registry may also *declare* its built-in names: then its
names are known without importing any provider (the command line builds its choices on machines without
torch), a provider may register only a declared name, and the first lookup checks that every declared
name has an implementation. Adding a quantizer, loss, strategy, task or model is one decorated definition
(plus its name in the declaration, for registries that declare theirs) and its tests; the public name
lists (``npuq.quant.WEIGHT_METHODS``, ``npuq.distill.LOSS_KINDS``, ...) are read from here.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Iterator

__all__ = [
    "ACTIVATION_OBSERVERS",
    "DISTILL_LOSSES",
    "DISTILL_PROCESSES",
    "MODELS",
    "REGISTRIES",
    "Registry",
    "SEARCH_STRATEGIES",
    "SEARCH_TASKS",
    "UnknownNameError",
    "WEIGHT_QUANTIZERS",
]


class UnknownNameError(ValueError, KeyError):
    """A name that the registry does not hold; the message lists the names it does hold.

    A ``ValueError`` (a bad argument or config value) and a ``KeyError`` (a failed lookup), so that
    callers catching either keep working."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry:
    """Names to implementations (and per-entry metadata) of one kind of extension.

    Args:
        kind: what the entries are, for messages ("weight quantizer").
        providers: dotted module names whose import registers the entries.
        declared: the built-in names, known without importing the providers (a tuple), or a dict of those
            names to the metadata their registrations must carry (readable through :meth:`select` without
            importing anything); ``None`` if the names are whatever the providers register.
    """

    def __init__(
        self, kind: str, providers: tuple[str, ...] = (), declared: tuple[str, ...] | dict[str, dict] | None = None
    ):
        if declared is not None and not isinstance(declared, dict) and len(set(declared)) != len(declared):
            raise ValueError(f"{kind} registry: declared names repeat: {declared}")
        self.kind = kind
        self.providers = tuple(providers)
        self.declared = None if declared is None else tuple(declared)
        self._declared_meta = {n: dict(m) for n, m in declared.items()} if isinstance(declared, dict) else {}
        self._entries: dict[str, Any] = {}
        self._meta: dict[str, dict] = {}
        self._loaded = not self.providers
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------ registration
    def register(self, name: str | None = None, **meta) -> Callable[[Any], Any]:
        """A decorator that registers a class or function under ``name`` (default: its ``__name__``),
        with keyword metadata readable through :meth:`meta`."""

        def decorate(obj):
            self.add(name or obj.__name__, obj, **meta)
            return obj

        return decorate

    def add(self, name: str, obj: Any, **meta) -> None:
        """Register ``obj`` under ``name`` (the decorator's work, for entries that are not definitions)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} names must be non-empty strings, got {name!r}")
        with self._lock:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {obj!r})")
            if self.declared is not None and name not in self.declared:
                raise ValueError(
                    f"{self.kind} {name!r} is not declared: add it to the declared names of its "
                    "registry in npuq/registry.py"
                )
            for key, want in self._declared_meta.get(name, {}).items():
                if meta.setdefault(key, want) != want:
                    raise ValueError(
                        f"{self.kind} {name!r} is declared with {key}={want!r} in npuq/registry.py "
                        f"but registered with {key}={meta[key]!r}: make them agree"
                    )
            self._entries[name] = obj
            self._meta[name] = dict(meta)

    # ------------------------------------------------------------------------------ lookup
    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            for module in self.providers:
                importlib.import_module(module)
            if self.declared is not None:
                missing = [n for n in self.declared if n not in self._entries]
                if missing:
                    raise RuntimeError(
                        f"{self.kind} registry: declared but not registered by "
                        f"{', '.join(self.providers)}: {', '.join(missing)}"
                    )
            self._loaded = True

    def names(self) -> tuple[str, ...]:
        """The registered names: the declared ones in their order (no import), otherwise grouped by provider
        in the order of ``providers`` and by definition within a provider, so the order does not depend on
        which provider some caller happened to import first."""
        if self.declared is not None:
            return self.declared
        self._load()
        rank = {module: i for i, module in enumerate(self.providers)}
        position = {name: i for i, name in enumerate(self._entries)}
        return tuple(
            sorted(
                self._entries,
                key=lambda n: (rank.get(getattr(self._entries[n], "__module__", None), len(rank)), position[n]),
            )
        )

    def get(self, name: str) -> Any:
        """The implementation registered under ``name``; :class:`UnknownNameError` lists the known names."""
        self.check(name)
        self._load()
        return self._entries[name]

    def meta(self, name: str) -> dict:
        """The metadata given at registration (a copy)."""
        self.check(name)
        self._load()
        return dict(self._meta[name])

    def select(self, **meta) -> tuple[str, ...]:
        """The names whose metadata has every given key equal to the given value, in :meth:`names` order;
        read from the declaration, without importing a provider, when it declares every given key."""
        declared, names = self._declared_meta, self.names()
        if declared and all(n in declared and all(k in declared[n] for k in meta) for n in names):
            return tuple(n for n in names if all(declared[n][k] == v for k, v in meta.items()))
        self._load()
        return tuple(n for n in self.names() if all(self._meta[n].get(k) == v for k, v in meta.items()))

    def check(self, name, what: str | None = None) -> str:
        """``name`` if it is registered, else :class:`UnknownNameError` naming ``what`` (default: the kind)."""
        names = self.names()
        if not isinstance(name, str) or name not in names:
            raise UnknownNameError(f"unknown {what or self.kind} {name!r}; known: {', '.join(names)}")
        return name

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self):
        self._load()
        return [(n, self._entries[n]) for n in self.names()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, providers={self.providers})"


# ---------------------------------------------------------------------------------------- the registries
WEIGHT_QUANTIZERS = Registry(
    "weight quantization method",
    providers=("npuq.quant.weights", "npuq.quant.data_aware"),
    # data_aware: the method needs statistics of each layer's input (npuq.quantize collects calibration data)
    declared={
        "per_layer": {"data_aware": False},
        "per_channel": {"data_aware": False},
        "wess": {"data_aware": False},
        "wess_mse": {"data_aware": False},
        "wess_output": {"data_aware": True},
    },
)
ACTIVATION_OBSERVERS = Registry(
    "activation observer",
    providers=("npuq.quant.observers",),
    declared=("minmax", "percentile", "mse", "kl"),
)
DISTILL_LOSSES = Registry("distillation loss", providers=("npuq.distill.losses",))
DISTILL_PROCESSES = Registry("distillation process", providers=("npuq.distill.experiment",))
# declared: `npuq lrf search --strategy` offers them without importing torch or optuna
SEARCH_STRATEGIES = Registry(
    "rank search strategy",
    providers=("npuq.lrf.search.reinforce", "npuq.lrf.search.optuna_search"),
    declared=("reinforce", "nsga2", "tpe", "random"),
)
SEARCH_TASKS = Registry("rank search task", providers=("npuq.lrf.search.tasks", "npuq.lrf.search.asr_task"))
MODELS = Registry("model", providers=("npuq.models.cnn", "npuq.models.mobilenet"))

REGISTRIES = {
    "weight_quantizers": WEIGHT_QUANTIZERS,
    "activation_observers": ACTIVATION_OBSERVERS,
    "distill_losses": DISTILL_LOSSES,
    "distill_processes": DISTILL_PROCESSES,
    "search_strategies": SEARCH_STRATEGIES,
    "search_tasks": SEARCH_TASKS,
    "models": MODELS,
}
