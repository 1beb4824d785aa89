"""Iterative compression: search at a target, fine-tune, search again on the fine-tuned model at a stricter
target (the loop of iterative AutoML low-rank factorization, Interspeech 2020).

Round k builds a new :class:`~npuq.lrf.search.space.SearchSpace` on the current model -- the weights changed
in the fine-tuning, so the SVDs are computed again -- and searches at ``targets[k]``, a compression relative
to the *original* model. The current model's factorized layers are densified (their factors multiplied out)
and capped at their current ranks: a re-search can lower a rank, never raise it, and the "keep" choice
keeps the current rank. Since the product of rank-r factors has rank <= r, its truncated SVD at the current
rank is the fine-tuned layer itself, and at a lower rank the best approximation of it. Ranks stay expressed
on the original layer shapes, so ``factorize(original, ranks)`` rebuilds any round's structure. The chosen
candidate (:meth:`SearchResult.choose`: the lowest error at the target) is built and handed to
``finetune(model) -> model``.

Each finished round leaves ``round_<k>/state.json`` (ranks, sizes, errors, timings), ``round_<k>/model.
safetensors`` (the fine-tuned weights) and ``round_<k>/search.json`` (every candidate) in ``out_dir``; a run
started again with the same ``out_dir`` loads the finished rounds and continues with the next one.
``candidates.json`` collects the candidates of all rounds, ``summary.json`` the rounds, ``pareto.png``
compression against error of single-shot and iterative search (:func:`plot_pareto`).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from npuq.lrf.factorize import factorize
from npuq.lrf.report import compression_report
from npuq.lrf.search.evaluation import Evaluator, Record, RewardConfig
from npuq.lrf.search.reinforce import ReinforceConfig
from npuq.lrf.search.result import SearchResult, pareto_front
from npuq.lrf.search.space import DEFAULT_FRACTIONS, SearchSpace

__all__ = ["IterationResult", "StateError", "iterate", "load_round", "plot_pareto"]

STATE_VERSION = 1


class StateError(ValueError):
    """A saved state of an iterative run is unreadable or belongs to a run with other settings."""


@dataclass
class IterationResult:
    """``rounds``: the state of every round (dicts as in ``round_<k>/state.json``); ``single_shot``: the same
    for the single-shot comparison (or ``None``); ``model``: the last round's fine-tuned model."""

    rounds: list[dict]
    original_error: float
    reference_size: int
    out_dir: Path
    model: nn.Module | None = None
    single_shot: dict | None = None
    searches: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.rounds[-1]

    def to_dict(self) -> dict:
        return {
            "original_error": self.original_error,
            "reference_size": self.reference_size,
            "rounds": self.rounds,
            "single_shot": self.single_shot,
        }


def _atomic_write(path: Path, text: str) -> None:
    # a run killed while writing must leave the old file or the new one, never half of one
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_weights(model: nn.Module, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise StateError(f"{path}: cannot read the {what} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{path}: the {what} is corrupt (not valid JSON: {exc}); delete {path.parent} to redo that step"
        ) from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: the {what} is corrupt (a JSON object was expected, got {type(data).__name__})")
    return data


def load_round(original: nn.Module, folder: str | Path) -> tuple[dict, nn.Module]:
    """The state and fine-tuned model of a finished round folder (``round_<k>`` or ``single_shot``): the
    structure rebuilt with ``factorize(original, state["ranks"])``, the weights loaded from
    ``model.safetensors``. Raises :class:`StateError` for a missing or corrupt file."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = _read_json(folder / "state.json", "round state")
    missing = [
        key for key in ("round", "target", "ranks", "size", "compression", "error_after_finetune") if key not in state
    ]
    if missing or state.get("version") != STATE_VERSION:
        raise StateError(
            f"{folder / 'state.json'}: not a round state of this version (missing {missing or 'nothing'}, "
            f"version {state.get('version')!r}); delete {folder} to redo the round"
        )
    weights = folder / "model.safetensors"
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # the reader raises its own error types for truncated or corrupt files
        raise StateError(
            f"{weights}: the fine-tuned weights are unreadable ({exc}); delete {folder} to redo the round"
        ) from None
    model = factorize(original, state["ranks"], above_break_even="ignore")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise StateError(
            f"{weights}: the weights do not fit the ranks of {folder / 'state.json'} "
            f"({str(exc).splitlines()[0]}); delete {folder} to redo the round"
        ) from None
    return state, model


def _reference_size(model: nn.Module, layers, scope: str) -> int:
    report = compression_report(model)
    if scope == "model":
        return report.model_params_before
    rows = [row for row in report.layers if not layers or any(fnmatch.fnmatchcase(row.path, p) for p in layers)]
    return sum(row.params_before for row in rows)


def _run_search(
    space: SearchSpace,
    evaluate: Callable,
    baseline_error: float | None,
    *,
    label: str,
    target: float,
    budget: int,
    strategy: str,
    max_error_increase: float,
    seed: int,
    progress: bool,
    reinforce: ReinforceConfig | None,
    reward_config: RewardConfig | None,
    optuna_options: dict | None,
) -> tuple[SearchResult, Evaluator]:
    from npuq.lrf.search.strategies import search

    evaluator = Evaluator(space, evaluate, baseline_error=baseline_error, source={"round": label})
    if optuna_options and optuna_options.get("study_name"):
        # each round searches another space (new caps): a study of its own
        suffix = label.replace(" ", "-")
        optuna_options = {**optuna_options, "study_name": f"{optuna_options['study_name']}-{suffix}"}
    result = search(
        evaluator,
        strategy=strategy,
        target=target,
        budget=budget,
        max_error_increase=max_error_increase,
        seed=seed,
        progress=progress,
        desc=f"{label}: {strategy} x{target:g}",
        reinforce=reinforce,
        reward_config=reward_config,
        optuna_options=optuna_options,
    )
    return result, evaluator


def _finish_round(
    folder: Path,
    label,
    target: float,
    result: SearchResult,
    space: SearchSpace,
    finetune: Callable,
    evaluate: Callable,
    test_error: Callable | None,
    original_error: float,
    seconds_search: float,
) -> tuple[dict, nn.Module]:
    chosen = result.choose()
    compressed = space.build(chosen.candidate)
    start = time.perf_counter()
    tuned = finetune(compressed)
    if tuned is None:  # a fine-tuning that works in place
        tuned = compressed
    if not isinstance(tuned, nn.Module):
        raise TypeError(f"finetune must return the fine-tuned model (or None), got {type(tuned).__name__}")
    seconds_finetune = time.perf_counter() - start
    error_after = float(evaluate(tuned))
    report = compression_report(tuned)
    state = {
        "version": STATE_VERSION,
        "round": label,
        "target": target,
        "strategy": result.strategy,
        "ranks": chosen.ranks,
        "size": chosen.size,
        "compression": chosen.compression,
        "model_params": report.model_params_after,
        "model_ratio": report.model_ratio,
        "layer_ratio": report.layer_ratio,
        "baseline_error": result.baseline_error,
        "original_error": original_error,
        "error_before_finetune": chosen.error,
        "error_after_finetune": error_after,
        "error_increase": error_after - original_error,
        "test_error": None if test_error is None else float(test_error(tuned)),
        "evaluations": result.evaluations,
        "candidates": len(result.history),
        "seconds_search": seconds_search,
        "seconds_finetune": seconds_finetune,
    }
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / "search.json", json.dumps(result.to_dict(), indent=1) + "\n")
    _save_weights(tuned, folder / "model.safetensors", {"ranks": chosen.ranks, "round": label})
    # the state is written last: a folder with a state.json is a finished round
    _atomic_write(folder / "state.json", json.dumps(state, indent=1) + "\n")
    return state, tuned


def _load_search(folder: Path) -> SearchResult:
    try:
        return SearchResult.from_dict(_read_json(folder / "search.json", "search log"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StateError):
            raise
        raise StateError(f"{folder / 'search.json'}: the search log is corrupt ({exc!r})") from None


def iterate(
    model: nn.Module,
    *,
    evaluate: Callable,
    finetune: Callable,
    targets: Sequence[float],
    out_dir: str | Path,
    strategy: str = "reinforce",
    budget_per_round: int = 100,
    layers: Sequence[str] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    basis: str = "break_even",
    scope: str = "model",
    max_error_increase: float = 0.01,
    seed: int = 0,
    reinforce: ReinforceConfig | None = None,
    reward_config: RewardConfig | None = None,
    optuna_options: dict | None = None,
    single_shot: bool = False,
    test_error: Callable | None = None,
    progress: bool = True,
) -> IterationResult:
    """Compress ``model`` in ``len(targets)`` rounds of search and fine-tuning (see the module text).

    Args:
        model: the original (dense) model; not modified.
        evaluate: ``model -> error`` on the development data (lower is better).
        finetune: ``model -> model`` (e.g. distillation from ``model`` on the training data); may modify its
            argument.
        targets: increasing compressions relative to ``model`` (``scope="model"``: all its parameters;
            ``"layers"``: the searched layers'), one per round.
        out_dir: where rounds are saved and resumed from.
        strategy, budget_per_round, max_error_increase, seed, reinforce, reward_config, optuna_options: the
            search of each round (:func:`npuq.lrf.search.search`); round k uses ``seed + k``.
        layers, fractions, basis, scope: the :class:`SearchSpace` of each round.
        single_shot: also search once at ``targets[-1]`` on the original model with the budget of all rounds,
            and fine-tune that choice once (the comparison of the Pareto plot).
        test_error: ``model -> error`` on held-out test data, recorded for each fine-tuned model (not used for
            any decision).
    """
    from tqdm.auto import tqdm

    targets = [float(t) for t in targets]
    if not targets or any(not (math.isfinite(t) and t >= 1.0) for t in targets):
        raise ValueError(f"targets must be a non-empty list of compressions >= 1, got {targets}")
    if any(b <= a for a, b in zip(targets, targets[1:])):
        raise ValueError(f"targets must increase from round to round, got {targets}")
    if isinstance(budget_per_round, bool) or not isinstance(budget_per_round, int) or budget_per_round < 1:
        raise ValueError(f"budget_per_round must be an integer >= 1, got {budget_per_round!r}")
    if not callable(evaluate) or not callable(finetune):
        raise TypeError("evaluate and finetune must be callables taking a model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    original = copy.deepcopy(model)
    settings = {
        "targets": targets,
        "strategy": strategy,
        "budget_per_round": budget_per_round,
        "layers": list(layers or []),
        "fractions": sorted(float(f) for f in fractions),
        "basis": basis,
        "scope": scope,
        "seed": seed,
        "single_shot": bool(single_shot),
    }
    run_file = out / "run.json"
    if run_file.exists():
        run = _read_json(run_file, "run settings")
        saved = run.get("settings", {})
        if saved != settings:
            differing = sorted(k for k in settings if saved.get(k) != settings[k])
            old_targets = saved.get("targets") or []
            extends = (
                differing == ["targets"]
                and len(targets) > len(old_targets)
                and targets[: len(old_targets)] == old_targets
                and not single_shot
            )
            if not extends:
                raise StateError(
                    f"{out} holds a run with other settings ({', '.join(differing)}); use another out_dir "
                    "or delete it to start over (a run without single_shot can be continued with more "
                    "targets appended to its list)"
                )
            # more rounds appended to a finished or running list: the rounds done so far stay valid
            _atomic_write(run_file, json.dumps({**run, "settings": settings}, indent=1) + "\n")
        original_error, reference = float(run["original_error"]), int(run["reference_size"])
    else:
        original_error = float(evaluate(original))
        reference = _reference_size(original, layers, scope)
        _atomic_write(
            run_file,
            json.dumps({"settings": settings, "original_error": original_error, "reference_size": reference}, indent=1)
            + "\n",
        )
    options = dict(
        strategy=strategy,
        max_error_increase=max_error_increase,
        progress=progress,
        reinforce=reinforce,
        reward_config=reward_config,
        optuna_options=optuna_options,
    )
    space_options = dict(layers=layers, fractions=fractions, basis=basis, scope=scope, reference_size=reference)
    rounds, searches = [], {}
    current, current_error = original, original_error
    bar = tqdm(total=len(targets) + int(single_shot), desc="lrf iterate", disable=not progress)
    for k, target in enumerate(targets, start=1):
        folder = out / f"round_{k}"
        if (folder / "state.json").exists():
            state, current = load_round(original, folder)
            searches[f"round {k}"] = _load_search(folder)
        else:
            start = time.perf_counter()
            space = SearchSpace(current, **space_options)
            result, _ = _run_search(
                space,
                evaluate,
                current_error,
                label=f"round {k}",
                target=target,
                budget=budget_per_round,
                seed=seed + k,
                **options,
            )
            state, current = _finish_round(
                folder,
                k,
                target,
                result,
                space,
                finetune,
                evaluate,
                test_error,
                original_error,
                time.perf_counter() - start,
            )
            searches[f"round {k}"] = result
        current_error = state["error_after_finetune"]
        rounds.append(state)
        bar.update(1)
        bar.set_postfix(compression=f"{state['compression']:.2f}x", error=f"{current_error:.4f}")
    single = None
    if single_shot:
        folder = out / "single_shot"
        if (folder / "state.json").exists():
            single, _ = load_round(original, folder)
            searches["single-shot"] = _load_search(folder)
        else:
            start = time.perf_counter()
            space = SearchSpace(original, **space_options)
            result, _ = _run_search(
                space,
                evaluate,
                original_error,
                label="single-shot",
                target=targets[-1],
                budget=budget_per_round * len(targets),
                seed=seed,
                **options,
            )
            single, _ = _finish_round(
                folder,
                "single-shot",
                targets[-1],
                result,
                space,
                finetune,
                evaluate,
                test_error,
                original_error,
                time.perf_counter() - start,
            )
            searches["single-shot"] = result
        bar.update(1)
    bar.close()
    log = [{**record.to_dict(), "search": label} for label, result in searches.items() for record in result.history]
    _atomic_write(out / "candidates.json", json.dumps(log, indent=1) + "\n")
    outcome = IterationResult(rounds, original_error, reference, out, current, single, searches)
    _atomic_write(out / "summary.json", json.dumps(outcome.to_dict(), indent=1) + "\n")
    finetuned = {"iterative (fine-tuned)": [(s["compression"], s["error_after_finetune"]) for s in rounds]}
    if single is not None:
        finetuned["single-shot (fine-tuned)"] = [(single["compression"], single["error_after_finetune"])]
    plot_pareto(
        out / "pareto.png",
        {label: result.history for label, result in searches.items()},
        finetuned=finetuned,
        baseline_error=original_error,
    )
    return outcome


def plot_pareto(
    path: str | Path,
    candidates: dict[str, Sequence[Record]],
    *,
    finetuned: dict[str, Sequence[tuple[float, float]]] | None = None,
    baseline_error: float | None = None,
    title: str = "Rank search: compression vs error",
) -> Path:
    """Compression (x) against error (y): every candidate of each search as faint dots, each search's Pareto
    front as a line, fine-tuned models as large markers joined in order, the uncompressed error as a
    dashed line. Written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, records) in enumerate(candidates.items()):
        color = colors[i % len(colors)]
        records = list(records)
        if not records:
            continue
        ax.scatter([r.compression for r in records], [r.error for r in records], s=8, alpha=0.25, color=color)
        front = sorted(pareto_front(records), key=lambda r: r.compression)
        ax.plot(
            [r.compression for r in front],
            [r.error for r in front],
            "-",
            lw=1.2,
            color=color,
            drawstyle="steps-pre",
            label=f"{label}: front of {len(records)} candidates",
        )
    markers = "os^D"
    for j, (label, points) in enumerate((finetuned or {}).items()):
        points = list(points)
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker=markers[j % len(markers)],
            ms=8,
            lw=2,
            color="black" if j == 0 else "tab:red",
            label=label,
        )
    if baseline_error is not None:
        ax.axhline(baseline_error, ls="--", color="gray", lw=1, label="uncompressed")
        errors = [r.error for records in candidates.values() for r in records]
        errors += [p[1] for points in (finetuned or {}).values() for p in points]
        # broken candidates (chance-level errors) would squash the interesting band near the baseline
        top = max(3 * baseline_error, baseline_error + 0.1)
        if errors and max(errors) > top:
            ax.set_ylim(min(min(errors), baseline_error) * 0.95, top)
            ax.set_ylabel("error (development set; higher ones cut off)")
    ax.set_xlabel("compression (parameters before / after)")
    if not ax.get_ylabel():
        ax.set_ylabel("error (development set)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
