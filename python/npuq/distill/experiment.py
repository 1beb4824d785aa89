"""Distillation experiments described by small TOML configs, run by ``npuq distill CONFIG``.

A config names the models, the data, the knowledge terms and their weights, the process, the optimizer
and schedule, and the seed; nothing else is needed to reproduce a run. Every key is checked before any
training starts: an unknown key or a value of the wrong type is an error naming the key.

```toml
name = "kd_cnn_w0.25"
process = "offline"        # alone | offline | dml | born_again | teacher_assistant
seed = 0
task_weight = 0.1

[student]
model = "cnn"              # npuq.registry.MODELS: cnn, mobilenet_v1, mobilenet_v2
width = 0.25

[[teachers]]               # offline / teacher_assistant: one or more; weight: ensemble weight
model = "cnn"
width = 4.0
epochs = 5                 # trained first (cached in the run folder) unless `checkpoint` names a file

[[terms]]                  # knowledge terms (npuq.distill.losses); student / teacher: "logits" or a module path
loss = "kd"
weight = 0.9
temperature = 4.0

[optim]
name = "sgd"
lr = 0.05
epochs = 5
batch_size = 128

[data]
train_limit = 0            # 0: the whole training split
corruption = "none"        # none | noise | occlusion: the student's input (the teachers see it clean)
```

Outputs in the run folder: ``experiment.json`` (the effective settings: the config with every override),
``metrics.json`` (config, per-run histories, final test accuracies), ``curves.png`` (test accuracy and loss
per epoch), ``<run>/checkpoint.safetensors`` (resumable) and ``<run>/model.safetensors`` (the final weights).
Every file is written atomically (a temporary file, flushed, renamed over the old one).

Starting a run in a folder that holds one (:meth:`Runner.check_folder`):

* the same settings: finished models are loaded, an interrupted one resumes from its last epoch; a run
  that had finished returns its saved result and says so;
* other settings: a :class:`ResumeError` naming each differing setting, since the saved models would not
  be what the new settings give. Two changes are let through because the result is exactly what a clean
  run in a new folder would give: ``name`` (a label), and ``optim.epochs`` when the learning rate does not
  depend on it (``optim.schedule = "constant"``) and no later model is taught by the one it trains
  (``alone``, ``offline``, ``dml``): training continues from the saved epoch, or resumes an interrupted
  run to the new total, provided no more epochs than that are done already.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from npuq._validate import Interval, Options
from npuq.config import ConfigError, check_fields, checked, fill, read_toml, require, value
from npuq.distill.objective import tap_channels
from npuq.distill.trainer import (
    OptimConfig,
    ResumeError,
    accuracy,
    atomic_write_bytes,
    atomic_write_text,
    fit,
    flatten,
    read_checkpoint_info,
)
from npuq.registry import DISTILL_LOSSES, DISTILL_PROCESSES, MODELS

CORRUPTIONS = ("none", "noise", "occlusion")
ENSEMBLES = ("loss", "logits")
# the loss names of [[terms]] tables; the processes are registered below, where they are defined
LOSS_KINDS = DISTILL_LOSSES.names()


# ------------------------------------------------------------------------------------------- schema
@dataclass
class ModelSpec:
    model: str = "cnn"
    width: float = checked(1.0, Interval(float, 0, None, closed="neither"))
    checkpoint: str = ""  # teachers: a shipped checkpoint name or a model.safetensors of an earlier run
    # teachers: train for this many epochs first when no checkpoint is given
    epochs: int = checked(0, Interval(int, 0, None))
    weight: float = checked(1.0, Interval(float, 0, None))  # teachers: ensemble weight

    def __post_init__(self):
        check_fields(self)


@dataclass
class TermSpec:
    loss: str = "kd"
    weight: float = 1.0
    student: str = "logits"
    teacher: str = "logits"
    params: dict = field(default_factory=dict)  # the loss's own arguments (temperature, beta, ...)


@dataclass
class DataSpec:
    train_limit: int = checked(0, Interval(int, 0, None))  # 0: all
    corruption: str = checked("none", Options(CORRUPTIONS))
    corruption_strength: float = 0.5

    def __post_init__(self):
        check_fields(self)


@dataclass
class Experiment:
    name: str = "distill"
    process: str = "offline"
    seed: int = 0
    task_weight: float = 1.0
    ensemble: str = "loss"
    student: ModelSpec = field(default_factory=ModelSpec)
    teachers: list = field(default_factory=list)
    assistant: ModelSpec | None = None
    terms: list = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataSpec = field(default_factory=DataSpec)
    peers: int = 2  # dml
    generations: int = 2  # born_again: distilled generations after the first
    kl_weight: float = 1.0  # dml


def parse_experiment(table: dict, source: str = "config") -> Experiment:
    """Validate a config table (from TOML) into an :class:`Experiment`."""
    known = {f.name for f in fields(Experiment)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; known: {', '.join(sorted(known))}")
    exp = Experiment()
    for key in ("name", "process", "ensemble"):
        if key in table:
            setattr(exp, key, value(table[key], str, f"{source}: {key}"))
    for key in ("seed", "peers", "generations"):
        if key in table:
            setattr(exp, key, value(table[key], int, f"{source}: {key}"))
    for key in ("task_weight", "kl_weight"):
        if key in table:
            setattr(exp, key, value(table[key], float, f"{source}: {key}"))
    require(exp.process, f"{source}: process", Options(DISTILL_PROCESSES.names()))
    needs = DISTILL_PROCESSES.meta(exp.process)
    for key in ("task_weight", "kl_weight"):
        require(getattr(exp, key), f"{source}: {key}", Interval(float, 0, None))
    if "student" in table:
        exp.student = _model(table["student"], f"{source}: student")
    if "assistant" in table:
        exp.assistant = _model(table["assistant"], f"{source}: assistant")
    teachers = table.get("teachers", [])
    if not isinstance(teachers, list):
        raise ConfigError(f"{source}: teachers must be an array of tables ([[teachers]])")
    exp.teachers = [_model(t, f"{source}: teachers[{i}]") for i, t in enumerate(teachers)]
    terms = table.get("terms", [])
    if not isinstance(terms, list):
        raise ConfigError(f"{source}: terms must be an array of tables ([[terms]])")
    exp.terms = [_term(t, f"{source}: terms[{i}]") for i, t in enumerate(terms)]
    if "optim" in table:
        exp.optim = fill(OptimConfig, table["optim"], f"{source}: optim")
    if "data" in table:
        exp.data = fill(DataSpec, table["data"], f"{source}: data")
    if needs.get("teachers") and not exp.teachers:
        raise ConfigError(f"{source}: process '{exp.process}' needs at least one [[teachers]] table")
    if exp.teachers and sum(t.weight for t in exp.teachers) <= 0:
        raise ConfigError(f"{source}: the teachers' weights sum to 0; give at least one teacher a positive weight")
    require(exp.ensemble, f"{source}: ensemble", Options(ENSEMBLES))
    if needs.get("assistant") and exp.assistant is None:
        raise ConfigError(f"{source}: process '{exp.process}' needs an [assistant] table")
    if needs.get("terms") and not exp.terms:
        raise ConfigError(f"{source}: process '{exp.process}' needs at least one [[terms]] table")
    if exp.process == "dml":
        require(exp.peers, f"{source}: peers of process dml", Interval(int, 2, None))
    if exp.process == "born_again":
        require(exp.generations, f"{source}: generations of process born_again", Interval(int, 1, None))
    # build every loss once now: bad loss arguments fail before training
    for i, t in enumerate(exp.terms):
        build_loss(t, f"{source}: terms[{i}]")
    return exp


def _model(table, where: str) -> ModelSpec:
    spec = fill(ModelSpec, table, where)
    if spec.model not in MODELS:
        raise ConfigError(f"{where}.model: unknown model {spec.model!r}; available: {', '.join(sorted(MODELS))}")
    return spec


def _term(table, where: str) -> TermSpec:
    spec = fill(TermSpec, table, where, extra="params")
    require(spec.loss, f"{where}.loss", Options(DISTILL_LOSSES.names()))
    require(spec.weight, f"{where}.weight", Interval(float, 0, None))
    return spec


def build_loss(spec: TermSpec, where: str = "term", student_channels=None, teacher_channels=None):
    """The loss module of a term (:data:`npuq.registry.DISTILL_LOSSES`); a loss registered with
    ``channels=True`` gets the tapped channel counts unless the term sets them."""
    params = dict(spec.params)
    if DISTILL_LOSSES.meta(spec.loss).get("channels") and student_channels is not None:
        params.setdefault("student_channels", student_channels)
        params.setdefault("teacher_channels", teacher_channels)
    try:
        return DISTILL_LOSSES.get(spec.loss)(**params)
    except TypeError as exc:
        raise ConfigError(f"{where}: bad argument for loss '{spec.loss}': {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_experiment(path: str | Path) -> Experiment:
    return parse_experiment(read_toml(path), str(path))


# ------------------------------------------------------------------------------------------- running
def corrupt(images: torch.Tensor, kind: str, strength: float, seed: int = 0) -> torch.Tensor:
    """The student's view in privileged-information runs: Gaussian noise (std = strength, in normalized
    units) or a random square occlusion (side = strength * image side), deterministic per image index."""
    if kind == "none":
        return images
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return images + strength * torch.randn(images.shape, generator=g)
    n, _, h, w = images.shape
    side = max(1, int(round(strength * min(h, w))))
    top = torch.randint(0, h - side + 1, (n,), generator=g)
    left = torch.randint(0, w - side + 1, (n,), generator=g)
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    mask = (
        (rows >= top[:, None, None])
        & (rows < top[:, None, None] + side)
        & (cols >= left[:, None, None])
        & (cols < left[:, None, None] + side)
    )
    return images.masked_fill(mask[:, None], float(images.min()))


def _data(exp: Experiment):
    from npuq.data.fashion_mnist import fashion_mnist_tensors

    x, y = fashion_mnist_tensors("train")
    if exp.data.train_limit:
        x, y = x[: exp.data.train_limit], y[: exp.data.train_limit]
    xt, yt = fashion_mnist_tensors("test")
    return (x, y), (xt, yt)


def _build(spec: ModelSpec, seed: int):
    from npuq.models import build_model

    torch.manual_seed(seed)
    return build_model(spec.model, spec.width)


def _save_model(model, path: Path, spec: ModelSpec, metrics: dict, epochs: int | None = None) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": spec.model, "width": str(spec.width), "metrics": json.dumps(metrics)}
    if epochs is not None:  # what a later start compares with the epochs it asks for
        meta["epochs"] = str(epochs)
    atomic_write_bytes(path, save(state, metadata=meta))


def _load_model(spec: ModelSpec, path: Path, error: type[ValueError] = ConfigError, advice: str = ""):
    from safetensors.torch import load_file

    model = _build(spec, 0)
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise error(f"{path}: unreadable or truncated safetensors file ({exc}){advice}") from None
    try:
        model.load_state_dict(state)
    except (OSError, RuntimeError) as exc:
        raise error(f"{path}: cannot load a {spec.model} w{spec.width} from it ({exc}){advice}") from None
    return model.eval()


def _model_epochs(path: Path, advice: str) -> int:
    """The epochs a finished run's model was trained for, from its header (no tensors read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return int(meta["epochs"]) if "epochs" in meta else int(json.loads(meta["metrics"])["epoch"])
    except Exception as exc:  # truncated file, or no epoch count in it
        raise ResumeError(f"{path}: unreadable or truncated model file ({exc!r}){advice}") from None


def _read_json(path: Path, what: str, advice: str):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{path}: the {what} is unreadable or corrupt ({exc}){advice}") from None


# ------------------------------------------------------------------------------------------- settings record
RECORD = "experiment.json"
RECORD_VERSION = 1
# settings that do not change any trained weight: a difference is recorded, not refused
COSMETIC = ("name",)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_file(name: str) -> Path | None:
    """The file a teacher's ``checkpoint`` names (a path or a shipped checkpoint), or None if there is none."""
    path = Path(name)
    if path.is_file():
        return path
    try:
        from npuq.models.checkpoints import resolve_checkpoint

        return resolve_checkpoint(name)
    except Exception:  # not found: Runner.teacher reports it with the list of shipped checkpoints
        return None


def experiment_settings(exp: Experiment) -> dict:
    """Everything that decides the result of ``exp`` (the config after every override, e.g. ``--seed`` and
    ``--epochs``), as plain JSON values. A teacher read from a file adds the file's SHA-256: a teacher
    retrained or replaced under the same name teaches something else."""
    settings = json.loads(json.dumps(dataclasses.asdict(exp)))
    for spec, entry in zip(exp.teachers, settings["teachers"]):
        if spec.checkpoint:
            path = _checkpoint_file(spec.checkpoint)
            entry["checkpoint_sha256"] = _sha256(path) if path is not None else None
    return settings


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Runner:
    """Runs an :class:`Experiment` in ``out_dir``; each training is a resumable sub-run."""

    def __init__(self, exp: Experiment, out_dir: str | Path, progress: bool = True):
        self.exp = exp
        self.out = Path(out_dir)
        self.progress = progress
        self.train, self.test = _data(exp)
        self.results: dict[str, Any] = {}
        self.trained: list[str] = []  # sub-runs that took at least one training step in this start

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"npuq distill: {text}", flush=True)

    def _student_view(self):
        d = self.exp.data
        if d.corruption == "none":
            return None
        return lambda x: corrupt(x, d.corruption, d.corruption_strength, self.exp.seed)

    # ------------------------------------------------------------------ the settings record
    def _advice(self) -> str:
        return f"; delete it, or use another output folder than {self.out} (or delete that folder) to start over"

    def _holds_results(self) -> bool:
        if (self.out / "metrics.json").exists():
            return True
        names = ("checkpoint.safetensors", "model.safetensors", "history.json")
        return self.out.is_dir() and any((d / n).exists() for d in self.out.iterdir() if d.is_dir() for n in names)

    def check_folder(self) -> str:
        """Compare the settings of this start with those recorded in the folder, record them, and return
        ``"new"``, ``"same"`` or ``"changed"`` (a change that cannot alter any result, see the module text).
        Raises :class:`ResumeError` naming every differing setting otherwise, before anything is trained."""
        record = self.out / RECORD
        settings = experiment_settings(self.exp)
        entry = {"version": RECORD_VERSION, "settings": settings}
        holds = self._holds_results()
        if holds and not record.exists():
            raise ResumeError(
                f"{self.out} holds trained models but no {RECORD} (written by an older npuq, or "
                "by something else): the settings they were trained with cannot be checked; "
                f"use another output folder, or delete {self.out} to start over"
            )
        if not holds:  # nothing trained here yet (or a start that failed before its first epoch): nothing to keep
            atomic_write_text(record, json.dumps(entry, indent=1) + "\n")
            return "new"
        saved = _read_json(record, "settings record", self._advice())
        if not isinstance(saved, dict) or saved.get("version") != RECORD_VERSION or "settings" not in saved:
            raise ResumeError(
                f"{record}: not a settings record of this npuq (version {RECORD_VERSION})" + self._advice()
            )
        old, new = flatten(saved["settings"]), flatten(settings)
        differing = [k for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
        if not differing:
            return "same"
        refused = [k for k in differing if k not in COSMETIC]
        if refused:
            self._check_change(refused, old, new)
        atomic_write_text(record, json.dumps(entry, indent=1) + "\n")
        changes = ", ".join(f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}" for k in differing)
        self._say(
            f"{self.out}: settings changed ({changes}); going on from the saved state gives what a clean run "
            "with these settings would"
        )
        return "changed"

    def _check_change(self, differing: list, old: dict, new: dict) -> None:
        changes = "; ".join(f"{k}: {_show(old.get(k))} -> {_show(new.get(k))}" for k in differing)
        head = (
            f"{self.out} holds a run of this experiment with other settings ({changes}); its models are not what "
            "these settings give"
        )
        how = (
            f"To run these settings, use another output folder (--out), or delete {self.out} to start over; to "
            f"get the saved result, start it with the settings recorded in {self.out / RECORD}."
        )
        if differing != ["optim.epochs"]:
            raise ResumeError(f"{head}. {how}")
        exp, epochs = self.exp, new["optim.epochs"]
        if exp.optim.schedule != "constant":
            raise ResumeError(
                f"{head}: with the {exp.optim.schedule} schedule the learning rate of every step depends "
                f"on the total number of epochs, so training cannot go on to {epochs} epochs and end "
                f'as a clean {epochs}-epoch run would (optim.schedule = "constant" can). {how}'
            )
        if exp.process not in LEAF_PROCESSES:
            raise ResumeError(
                f"{head}: in process '{exp.process}' the models trained for optim.epochs teach the "
                f"next ones, so every later model would change too. {how}"
            )
        run = "dml" if exp.process == "dml" else "student"
        done = self._epochs_done(self.out / run)
        if done > epochs:
            raise ResumeError(
                f"{head}: {run} has {done} epochs done already and the {epochs}-epoch state is not kept. {how}"
            )

    def _epochs_done(self, folder: Path) -> int:
        ckpt, final = folder / "checkpoint.safetensors", folder / "model.safetensors"
        if ckpt.exists():
            return read_checkpoint_info(ckpt)["epoch"]
        return _model_epochs(final, self._advice()) if final.exists() else 0

    # ------------------------------------------------------------------ training
    def train_model(
        self,
        run: str,
        spec: ModelSpec,
        teachers=(),
        terms=(),
        seed_offset: int = 0,
        epochs: int | None = None,
        student_input=None,
        teacher_weights=None,
    ):
        """Train (or load, when finished earlier for as many epochs) one model; returns it in eval mode."""
        from npuq.distill.processes import offline_learner

        optim = copy.copy(self.exp.optim)
        if epochs:
            optim.epochs = epochs
        final = self.out / run / "model.safetensors"
        if final.exists():
            held = _model_epochs(final, self._advice())
            if held == optim.epochs:
                model = _load_model(spec, final, ResumeError, self._advice())
                self.results[run] = _read_json(self.out / run / "history.json", "training history", self._advice())
                return model
            if held > optim.epochs:  # check_folder refuses this first; a safety net for direct callers
                raise ResumeError(
                    f"{final} was trained for {held} epochs, not the {optim.epochs} asked for" + self._advice()
                )
            # fewer: check_folder allowed more epochs; fit continues from the checkpoint
        model = _build(spec, self.exp.seed * 1000 + seed_offset)
        loss_terms = [self._term(t, model, teachers) for t in terms]
        learner = offline_learner(
            model,
            list(teachers),
            loss_terms,
            optim,
            test=self.test,
            task_weight=self.exp.task_weight if terms else 1.0,
            teacher_weights=(list(teacher_weights) if teacher_weights is not None else [1.0] * len(teachers))
            if teachers
            else None,
            ensemble=self.exp.ensemble,
            student_input=student_input,
        )
        summary = fit(
            learner, *self.train, optim, seed=self.exp.seed, out_dir=self.out / run, progress=self.progress, desc=run
        )
        learner.modules["objective"].remove_taps()
        self._note(run, summary, optim.epochs)
        self.results[run] = summary["history"]
        _save_model(model, final, spec, summary["history"][-1], optim.epochs)
        return model.eval()

    def _note(self, run: str, summary: dict, epochs: int) -> None:
        start = summary["start_epoch"]
        if start < epochs:
            self.trained.append(run)
        if 0 < start < epochs:
            self._say(f"{run}: resumed at epoch {start} of {epochs} from {self.out / run / 'checkpoint.safetensors'}")

    def _term(self, spec: TermSpec, student, teachers):
        from npuq.distill.objective import Term

        cs = ct = None
        if DISTILL_LOSSES.meta(spec.loss).get("channels"):  # an adapter: sized before the optimizer is built
            probe = self.train[0][:2]
            cs, ct = tap_channels(student, spec.student, probe), tap_channels(teachers[0], spec.teacher, probe)
        return Term(build_loss(spec, spec.loss, cs, ct), spec.weight, student=spec.student, teacher=spec.teacher)

    def teacher(self, i: int, spec: ModelSpec):
        if spec.checkpoint:
            from npuq._shipped import listing
            from npuq.models.checkpoints import list_checkpoints, load_checkpoint

            if spec.checkpoint in list_checkpoints():  # a shipped, trained network
                model, meta = load_checkpoint(spec.checkpoint)
                if meta.get("model") != spec.model or float(meta.get("width", -1)) != spec.width:
                    raise ConfigError(
                        f"teachers[{i}]: checkpoint {spec.checkpoint!r} is a {meta.get('model')} "
                        f"w{meta.get('width')}, not the {spec.model} w{spec.width} the config names"
                    )
                return model.eval()
            path = Path(spec.checkpoint)
            if not path.exists():
                raise ConfigError(
                    f"teachers[{i}].checkpoint: no such file {path} (nor a shipped checkpoint: "
                    f"{listing(list_checkpoints())})"
                )
            return _load_model(spec, path)
        if spec.epochs < 1:
            raise ConfigError(f"teachers[{i}] needs a checkpoint or epochs >= 1 to be trained first")
        return self.train_model(f"teacher{i}", spec, seed_offset=100 + i, epochs=spec.epochs)

    def run(self) -> dict:
        exp = self.exp
        state = self.check_folder()
        finals = DISTILL_PROCESSES.get(exp.process)(self, self._student_view())
        metrics = {
            "name": exp.name,
            "process": exp.process,
            "seed": exp.seed,
            "final_test_accuracy": finals,
            "histories": self.results,
        }
        atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        self._plot()
        if state != "new" and not self.trained:
            self._say(
                f"{self.out} holds this experiment, trained with these settings already: returning its saved "
                "result, nothing was trained (use another --out, or delete the folder, to train again)"
            )
        return metrics

    def _dml(self) -> dict:
        from npuq.distill.processes import mutual_learner

        exp = self.exp
        peers = [_build(exp.student, exp.seed * 1000 + i) for i in range(exp.peers)]
        learner = mutual_learner(peers, exp.optim, test=self.test, kl_weight=exp.kl_weight)
        summary = fit(
            learner, *self.train, exp.optim, seed=exp.seed, out_dir=self.out / "dml", progress=self.progress, desc="dml"
        )
        self._note("dml", summary, exp.optim.epochs)
        self.results["dml"] = summary["history"]
        accs = {f"peer{i}": accuracy(p, *self.test) for i, p in enumerate(peers)}
        accs["student"] = sum(accs.values()) / len(peers)
        for i, p in enumerate(peers):
            _save_model(
                p,
                self.out / "dml" / f"peer{i}.safetensors",
                exp.student,
                {"test_accuracy": accs[f"peer{i}"]},
                exp.optim.epochs,
            )
        return accs

    def _acc(self, model, view) -> float:
        images, labels = self.test
        return accuracy(model, view(images) if view is not None else images, labels)

    def _plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - matplotlib is in every extra
            return
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
        for run, hist in self.results.items():
            epochs = [h["epoch"] for h in hist]
            if "test_accuracy" in hist[0]:
                ax1.plot(epochs, [100 * h["test_accuracy"] for h in hist], marker="o", label=run)
            key = (
                "train_loss" if "train_loss" in hist[0] else next((k for k in hist[0] if k.startswith("train_")), None)
            )
            if key:
                ax2.plot(epochs, [h[key] for h in hist], marker="o", label=f"{run} {key[6:]}")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("test top-1 (%)")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("training loss")
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
        fig.suptitle(f"{self.exp.name} ({self.exp.process}, seed {self.exp.seed})")
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(self.out / "curves.png", png.getvalue())


# ------------------------------------------------------------------------------------------- processes
# Each process trains the models of one experiment and returns their final test accuracies (the student's
# as "student"). Registered with what its config must hold (teachers, terms, an assistant) and whether
# it is a leaf: the model trained for optim.epochs teaches no later model (a teacher_assistant's assistant
# and a born_again generation do), so only a leaf can change optim.epochs on resume.
@DISTILL_PROCESSES.register("alone", leaf=True)
def _alone(runner: Runner, view) -> dict:
    m = runner.train_model("student", runner.exp.student, student_input=view)
    return {"student": runner._acc(m, view)}


@DISTILL_PROCESSES.register("offline", teachers=True, terms=True, leaf=True)
def _offline(runner: Runner, view) -> dict:
    exp = runner.exp
    teachers = [runner.teacher(i, t) for i, t in enumerate(exp.teachers)]
    finals = {f"teacher{i}": runner._acc(t, None) for i, t in enumerate(teachers)}
    m = runner.train_model(
        "student",
        exp.student,
        teachers,
        exp.terms,
        student_input=view,
        teacher_weights=[t.weight for t in exp.teachers],
    )
    finals["student"] = runner._acc(m, view)
    return finals


@DISTILL_PROCESSES.register("dml", leaf=True)
def _mutual(runner: Runner, view) -> dict:
    return runner._dml()


@DISTILL_PROCESSES.register("born_again", terms=True)
def _born_again(runner: Runner, view) -> dict:
    exp = runner.exp
    prev = runner.train_model("generation0", exp.student)
    finals = {"generation0": runner._acc(prev, None)}
    for g in range(1, exp.generations + 1):
        prev = runner.train_model(f"generation{g}", exp.student, [prev], exp.terms, seed_offset=g)
        finals[f"generation{g}"] = runner._acc(prev, None)
    finals["student"] = finals[f"generation{exp.generations}"]
    return finals


@DISTILL_PROCESSES.register("teacher_assistant", teachers=True, terms=True, assistant=True)
def _teacher_assistant(runner: Runner, view) -> dict:
    exp = runner.exp
    teachers = [runner.teacher(i, t) for i, t in enumerate(exp.teachers)]
    finals = {"teacher0": runner._acc(teachers[0], None)}
    a = runner.train_model(
        "assistant", exp.assistant, teachers, exp.terms, seed_offset=1, teacher_weights=[t.weight for t in exp.teachers]
    )
    finals["assistant"] = runner._acc(a, None)
    m = runner.train_model("student", exp.student, [a], exp.terms, student_input=view)
    finals["student"] = runner._acc(m, view)
    return finals


PROCESSES = DISTILL_PROCESSES.names()
LEAF_PROCESSES = DISTILL_PROCESSES.select(leaf=True)


def run_experiment(config: str | Path | Experiment, out_dir: str | Path, progress: bool = True) -> dict:
    exp = config if isinstance(config, Experiment) else load_experiment(config)
    return Runner(exp, out_dir, progress).run()


__all__ = [
    "ConfigError",
    "Experiment",
    "LOSS_KINDS",
    "ModelSpec",
    "PROCESSES",
    "ResumeError",
    "Runner",
    "TermSpec",
    "corrupt",
    "experiment_settings",
    "load_experiment",
    "parse_experiment",
    "run_experiment",
]
