"""``npuq lrf search | iterate | apply | report``: rank search and factorization from the command line.

* ``npuq lrf search CONFIG``: one search (``strategy`` of the config) at ``[search] target``; writes
  ``search.json`` (every candidate, the Pareto front, the choices), ``ranks.json`` and ``pareto.png``.
  Several processes given the same ``--storage`` and ``--study-name`` share one Optuna study.
* ``npuq lrf iterate CONFIG``: search and fine-tune round after round (resumable; ``docs/lrf_search.md``).
* ``npuq lrf apply --model CKPT --ranks ranks.json --out small.safetensors``: factorize a checkpoint (an
  image classifier's or the speech recognizer's; the output is of the same kind).
* ``npuq lrf report MODEL_OR_RANKS``: the parameter report of a checkpoint (dense or factorized) or of a
  ranks file applied to its model.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def add_commands(sub) -> None:
    from npuq._cliutil import float_range, int_range
    from npuq.registry import SEARCH_STRATEGIES  # declared names: no torch or optuna import

    lrf = sub.add_parser(
        "lrf",
        help="low-rank factorization: rank search (RL or Optuna), iterative compression, "
        "apply ranks, parameter reports (docs/lrf_search.md)",
    )
    commands = lrf.add_subparsers(dest="lrf_command", required=True)

    s = commands.add_parser("search", help="search per-layer ranks at a target compression (TOML config)")
    s.add_argument("config", help="a TOML config, e.g. configs/lrf/mobilenet_v2_search.toml")
    s.add_argument("--out", default=None, help="output folder (default: results/lrf/<name>)")
    s.add_argument("--strategy", default=None, choices=SEARCH_STRATEGIES.names(), help="override the config's strategy")
    s.add_argument(
        "--budget",
        type=int_range(1),
        default=None,
        help="override [search] budget (candidates; Optuna: the completed trials of the whole study)",
    )
    s.add_argument("--target", type=float_range(1.0), default=None, help="override [search] target compression")
    s.add_argument("--seed", type=int, default=None, help="override the config's seed")
    s.add_argument(
        "--storage",
        default=None,
        help="override [optuna] storage: an SQLite path or a database URL "
        "such as postgresql://user:password@host:5432/db (shared by all workers)",
    )
    s.add_argument("--study-name", default=None, help="override [optuna] study_name")
    s.add_argument(
        "--worker-id",
        type=int_range(0),
        default=None,
        help="offsets the sampler seed of this worker of a "
        "shared study (default: derived from host name and process id)",
    )
    s.set_defaults(func=_run_search)

    it = commands.add_parser(
        "iterate",
        help="iterative compression: search, fine-tune with the original as "
        "teacher, search again at a stricter target (resumable)",
    )
    it.add_argument("config", help="a TOML config, e.g. configs/lrf/mobilenet_v2_iterate.toml")
    it.add_argument(
        "--out",
        default=None,
        help="run folder (default: results/lrf/<name>); an interrupted run "
        "resumes from its finished rounds when started again with the same folder",
    )
    it.add_argument("--seed", type=int, default=None, help="override the config's seed")
    it.set_defaults(func=_run_iterate)

    a = commands.add_parser("apply", help="factorize a checkpoint with given ranks and save it")
    a.add_argument("--model", required=True, help="a shipped checkpoint name or a .safetensors path")
    a.add_argument(
        "--ranks",
        required=True,
        help="a JSON file: {path: rank} or an object with a 'ranks' entry "
        "(ranks.json of `npuq lrf search`, state.json of a round)",
    )
    a.add_argument("--out", required=True, help="the .safetensors file to write")
    a.set_defaults(func=_run_apply)

    r = commands.add_parser("report", help="parameters per layer before and after factorization")
    r.add_argument(
        "target",
        metavar="MODEL_OR_RANKS",
        help="a checkpoint (shipped name or .safetensors, dense or written by `npuq lrf apply`) or a ranks JSON file",
    )
    r.add_argument(
        "--model", default=None, help="with a ranks file: the checkpoint to apply it to (default: its 'model' entry)"
    )
    r.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    r.set_defaults(func=_run_report)


def _fail(command: str, exc: Exception) -> int:
    print(f"npuq lrf {command}: {exc}", file=sys.stderr)
    return 2


def _quiet_optuna() -> None:
    try:
        import optuna
    except ImportError:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _one_thread() -> None:
    import torch

    # the candidates are small models evaluated one after the other; more threads only contend
    torch.set_num_threads(1)


def _run_search(args) -> int:
    from npuq.lrf.search import Evaluator, SearchSpace, StorageError, search
    from npuq.lrf.search.config import ConfigError, load_config

    try:
        config = load_config(args.config)
        for key, value in (("strategy", args.strategy), ("seed", args.seed)):
            if value is not None:
                setattr(config, key, value)
        if args.budget is not None:
            config.search.budget = args.budget
        if args.target is not None:
            config.search.target = args.target
        if args.storage is not None:
            config.optuna.storage = args.storage
        if args.study_name is not None:
            config.optuna.study_name = args.study_name
        from npuq.lrf.search.config import SearchSpec, fill

        fill(SearchSpec, vars(config.search), f"{args.config}: search")
        task = config.make_task()
    except (ConfigError, ValueError) as exc:
        return _fail("search", exc)
    _one_thread()
    _quiet_optuna()
    out = Path(args.out or f"results/lrf/{config.name}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = task.load_model()
    sp = config.space
    space = SearchSpace(
        model, layers=sp.layers or None, fractions=sp.fractions, basis=sp.basis, keep=sp.keep, scope=sp.scope
    )
    evaluator = Evaluator(space, task.evaluate)
    try:
        result = search(
            evaluator,
            strategy=config.strategy,
            target=config.search.target,
            budget=config.search.budget,
            max_error_increase=config.max_error_increase,
            seed=config.seed,
            reinforce=config.reinforce.policy(),
            reward_config=config.reinforce.reward(config.search.target),
            optuna_options=config.optuna.options(args.worker_id),
        )
    except StorageError as exc:
        return _fail("search", exc)
    seconds = time.perf_counter() - start
    from npuq.lrf.search import plot_pareto

    chosen = {}
    for label, record in (("best", result.best), ("at_target", result.at_target)):
        if record is None:
            continue
        built = space.build(record.candidate)
        chosen[label] = {**record.to_dict(), "test_error": task.test_error(built)}
    summary = {
        "config": str(args.config),
        "task": task.describe(),
        "space": space.describe(),
        "original_test_error": task.test_error(model),
        "seconds": seconds,
        "chosen": chosen,
        **result.to_dict(),
    }
    (out / "search.json").write_text(json.dumps(summary, indent=1) + "\n")
    pick = chosen.get("best") or chosen.get("at_target")
    if pick is not None:
        (out / "ranks.json").write_text(
            json.dumps(
                {
                    "model": task.options.model,
                    "ranks": pick["ranks"],
                    "compression": pick["compression"],
                    "error": pick["error"],
                },
                indent=1,
            )
            + "\n"
        )
    plot_pareto(
        out / "pareto.png",
        {f"{result.strategy} x{result.target:g}": result.history},
        baseline_error=result.baseline_error,
    )
    print(
        f"{config.name}: {len(result.history)} candidates, {result.evaluations} evaluated, {seconds:.0f} s; "
        f"uncompressed dev error {result.baseline_error:.4f}"
    )
    for label, entry in chosen.items():
        print(
            f"  {label}: {entry['compression']:.2f}x, dev error {entry['error']:.4f}, "
            f"test error {entry['test_error']:.4f}, ranks {json.dumps(entry['ranks'])}"
        )
    if not chosen:
        print(f"  no candidate reached x{result.target:g} or stayed within the error limit")
    print(f"wrote {out / 'search.json'}, {out / 'pareto.png'}" + (f", {out / 'ranks.json'}" if pick else ""))
    return 0


def _run_iterate(args) -> int:
    from npuq.lrf.search import iterate
    from npuq.lrf.search.config import ConfigError, load_config
    from npuq.lrf.search.iterate import StateError

    try:
        config = load_config(args.config)
        if args.seed is not None:
            config.seed = args.seed
        task = config.make_task()
    except (ConfigError, ValueError) as exc:
        return _fail("iterate", exc)
    _one_thread()
    _quiet_optuna()
    out = Path(args.out or f"results/lrf/{config.name}")
    start = time.perf_counter()
    model = task.load_model()
    sp, it = config.space, config.iterate
    try:
        result = iterate(
            model,
            evaluate=task.evaluate,
            finetune=lambda m: task.finetune(m, model),
            targets=it.targets,
            out_dir=out,
            strategy=config.strategy,
            budget_per_round=it.budget_per_round,
            layers=sp.layers or None,
            fractions=sp.fractions,
            basis=sp.basis,
            scope=sp.scope,
            max_error_increase=config.max_error_increase,
            seed=config.seed,
            reinforce=config.reinforce.policy(),
            reward_config=config.reinforce.reward(it.targets[0]),
            optuna_options=config.optuna.options(),
            single_shot=it.single_shot,
            test_error=task.test_error,
        )
    except StateError as exc:
        return _fail("iterate", exc)
    seconds = time.perf_counter() - start
    print(f"{config.name}: uncompressed dev error {result.original_error:.4f} ({seconds:.0f} s)")
    print(
        "| round | target | compression | dev error before / after fine-tuning | test error | candidates (evaluated) |"
    )
    print("|---|---:|---:|---|---:|---|")
    rows = list(result.rounds) + ([result.single_shot] if result.single_shot else [])
    for state in rows:
        print(
            f"| {state['round']} | {state['target']:g}x | {state['compression']:.2f}x | "
            f"{state['error_before_finetune']:.4f} / {state['error_after_finetune']:.4f} | "
            f"{state['test_error']:.4f} | {state['candidates']} ({state['evaluations']}) |"
        )
    print(f"wrote {out}/summary.json, candidates.json, pareto.png, round_*/")
    return 0


def _read_ranks(path) -> tuple[dict, str | None]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read ranks file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("ranks"), dict):
        return data["ranks"], data.get("model")
    if isinstance(data, dict) and all(isinstance(v, (int, dict)) and not isinstance(v, bool) for v in data.values()):
        return data, None
    raise ValueError(f"{path}: expected {{module path: rank}} or an object with a 'ranks' entry")


def _is_asr_checkpoint(name_or_path) -> bool:
    """Whether ``name_or_path`` names a speech-recognizer checkpoint (``npuq.asr``'s format) rather than an
    image classifier's."""
    from safetensors import safe_open

    from npuq.asr import ASR_FORMAT
    from npuq.models.checkpoints import resolve_checkpoint

    try:
        path = resolve_checkpoint(name_or_path, kind="asr")
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == ASR_FORMAT
    except Exception:  # not found or unreadable: the image loader gives the error message
        return False


def _load_checkpoint(name_or_path):
    """``(model, metadata, save)`` for an image or speech checkpoint, dense or factorized; ``save(model,
    path, metadata, ranks)`` writes a factorized one of the same kind."""
    if _is_asr_checkpoint(name_or_path):
        from npuq.lrf.search.asr_task import load_asr_lrf_checkpoint, save_asr_lrf_checkpoint

        model, meta = load_asr_lrf_checkpoint(name_or_path)
        return model, meta, save_asr_lrf_checkpoint
    from npuq.lrf.search.tasks import load_lrf_checkpoint, save_lrf_checkpoint

    model, meta = load_lrf_checkpoint(name_or_path)
    return model, meta, save_lrf_checkpoint


def _checkpoint_errors() -> tuple:
    from npuq.asr import ASRCheckpointError
    from npuq.models.checkpoints import CheckpointMismatchError, CheckpointNotFoundError

    return (
        ValueError,
        KeyError,
        TypeError,
        FileNotFoundError,
        CheckpointNotFoundError,
        CheckpointMismatchError,
        ASRCheckpointError,
    )


def _run_apply(args) -> int:
    from npuq.lrf import compression_report, factorize

    try:
        ranks, _ = _read_ranks(args.ranks)
        model, meta, save = _load_checkpoint(args.model)
        if "lrf_ranks" in meta:
            raise ValueError(f"{args.model} is factorized already; apply ranks to the dense checkpoint it came from")
        small = factorize(model, ranks, above_break_even="warn")
    except _checkpoint_errors() as exc:
        return _fail("apply", exc)
    from npuq.lrf import factorized_ranks

    save(small, args.out, meta, factorized_ranks(small))
    report = compression_report(small)
    print(report.to_markdown())
    print(f"wrote {args.out}")
    return 0


def _run_report(args) -> int:
    from npuq.lrf import compression_report, factorize

    try:
        if args.target.endswith(".json"):
            ranks, named = _read_ranks(args.target)
            source = args.model or named
            if source is None:
                raise ValueError(f"{args.target} names no model; give --model")
            model, meta, _ = _load_checkpoint(source)
            if "lrf_ranks" in meta:
                raise ValueError(f"{source} is factorized already; give the dense checkpoint the ranks apply to")
            model = factorize(model, ranks, above_break_even="ignore")
        else:
            model, _, _ = _load_checkpoint(args.target)
    except _checkpoint_errors() as exc:
        return _fail("report", exc)
    report = compression_report(model)
    print(report.to_json() if args.json else report.to_markdown())
    return 0


__all__ = ["add_commands"]
