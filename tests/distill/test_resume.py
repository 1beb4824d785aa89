"""Starting a distillation experiment again in its folder: the settings recorded there are compared with
the new ones (the same: the saved result or a resumed run; other ones: refused, naming each difference,
unless the result is exactly that of a clean run), every file is written atomically, and a damaged file
is a ResumeError naming it.

Interruptions are made at a known epoch (a checkpoint hook that raises, or a worker that kills itself
with SIGKILL right after that epoch's checkpoint), never after a sleep: the outcome does not depend on the
load of the machine."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import npuq.distill.trainer as trainer
from npuq.distill import OptimConfig, Term, fit, offline_learner
from npuq.distill.experiment import ResumeError, Runner, _save_model, parse_experiment, run_experiment
from npuq.distill.losses import KDLoss
from npuq.models import build_model
from support import HERE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORKER = HERE / "distill_worker.py"

# the student alone on 256 images, 4 steps of 64 per epoch: a start takes about a second
ALONE = {
    "name": "resume",
    "process": "alone",
    "seed": 0,
    "student": {"model": "cnn", "width": 0.25},
    "optim": {"lr": 0.05, "epochs": 2, "batch_size": 64, "schedule": "constant"},
    "data": {"train_limit": 256},
}


TEST_IMAGES = 500  # of the 10,000 test images: evaluating all after every epoch would be most of the time


@pytest.fixture(autouse=True)
def _small_test_split(monkeypatch):
    import npuq.distill.experiment as experiment

    monkeypatch.setattr(experiment, "_data", _first_test_images(experiment._data, TEST_IMAGES))


def _first_test_images(data, n):
    def load(exp):
        train, (x, y) = data(exp)
        return train, (x[:n], y[:n])

    return load


def _cfg(epochs=None, schedule=None, **top):
    cfg = copy.deepcopy(ALONE)
    if epochs is not None:
        cfg["optim"]["epochs"] = epochs
    if schedule is not None:
        cfg["optim"]["schedule"] = schedule
    cfg.update(top)
    return cfg


def _run(cfg, out, progress=False):
    return run_experiment(parse_experiment(cfg, "cfg.toml"), out, progress=progress)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _Killed(BaseException):
    """What a kill at a known epoch looks like from inside (not an Exception: nothing may catch it)."""


def _kill_after_epoch(monkeypatch, epoch: int):
    save = trainer.save_checkpoint

    def save_then_stop(path, learner, done, history, extra=None):
        save(path, learner, done, history, extra)
        if done == epoch:
            raise _Killed(f"killed after epoch {done}")

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)


# ------------------------------------------------------------------------------------------ same settings
def test_a_finished_run_started_again_returns_its_saved_result_and_says_so(tmp_path, capsys):
    first = _run(_cfg(), tmp_path)
    before = _snapshot(tmp_path / "student")
    capsys.readouterr()
    again = _run(_cfg(), tmp_path, progress=True)
    assert "returning its saved result, nothing was trained" in capsys.readouterr().out
    assert again["final_test_accuracy"] == first["final_test_accuracy"]
    assert _snapshot(tmp_path / "student") == before  # not retrained, not rewritten
    # a new name is a label: the result is the same and is returned
    renamed = _run(_cfg(name="renamed"), tmp_path)
    assert renamed["name"] == "renamed" and renamed["final_test_accuracy"] == first["final_test_accuracy"]
    assert json.loads((tmp_path / "experiment.json").read_text())["settings"]["name"] == "renamed"


# ------------------------------------------------------------------------------------------ other settings
def test_more_epochs_on_a_finished_cosine_run_are_refused_naming_the_setting(tmp_path):
    _run(_cfg(schedule="cosine"), tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(ResumeError, match=r"optim\.epochs: 2 -> 3.*cosine schedule.*another output folder"):
        _run(_cfg(epochs=3, schedule="cosine"), tmp_path)
    assert _snapshot(tmp_path) == before  # refused before anything was written


def test_other_settings_are_refused_naming_every_difference(tmp_path):
    _run(_cfg(), tmp_path)
    before = _snapshot(tmp_path)
    cfg = _cfg(seed=1, task_weight=0.5)
    cfg["data"]["train_limit"] = 320
    with pytest.raises(ResumeError) as info:
        _run(cfg, tmp_path)
    message = str(info.value)
    assert "data.train_limit: 256 -> 320" in message and "seed: 0 -> 1" in message
    assert "task_weight: 1.0 -> 0.5" in message and "delete" in message and "--out" in message
    assert _snapshot(tmp_path) == before


def test_constant_schedule_goes_on_to_more_epochs_as_a_clean_run_would(tmp_path):
    _run(_cfg(epochs=2), tmp_path / "extended")
    longer = _run(_cfg(epochs=3), tmp_path / "extended")
    clean = _run(_cfg(epochs=3), tmp_path / "clean")
    assert [h["epoch"] for h in longer["histories"]["student"]] == [1, 2, 3]
    assert _same_weights(
        tmp_path / "extended" / "student" / "model.safetensors", tmp_path / "clean" / "student" / "model.safetensors"
    )
    assert longer["final_test_accuracy"] == clean["final_test_accuracy"]
    # the 3-epoch run cannot give back its 2-epoch model
    with pytest.raises(ResumeError, match=r"optim\.epochs: 3 -> 2.*student has 3 epochs done"):
        _run(_cfg(epochs=2), tmp_path / "extended")


def test_more_epochs_are_refused_where_the_model_teaches_the_next_one(tmp_path):
    cfg = _cfg(process="born_again", generations=1, terms=[{"loss": "kd", "weight": 0.5}])
    cfg["optim"]["epochs"] = 1
    _run(cfg, tmp_path)
    cfg["optim"]["epochs"] = 2
    with pytest.raises(ResumeError, match=r"optim\.epochs: 1 -> 2.*'born_again'.*teach the next ones"):
        _run(cfg, tmp_path)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_run_killed_at_epoch_3_of_6_and_resumed_for_4_epochs(tmp_path, monkeypatch, schedule):
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 3)
        with pytest.raises(_Killed):
            _run(_cfg(epochs=6, schedule=schedule), tmp_path / "cut")
    if schedule == "cosine":  # its learning rates so far were those of a 6-epoch run
        with pytest.raises(ResumeError, match=r"optim\.epochs: 6 -> 4.*cosine"):
            _run(_cfg(epochs=4, schedule=schedule), tmp_path / "cut")
        return
    resumed = _run(_cfg(epochs=4, schedule=schedule), tmp_path / "cut")
    _run(_cfg(epochs=4, schedule=schedule), tmp_path / "clean")
    assert [h["epoch"] for h in resumed["histories"]["student"]] == [1, 2, 3, 4]
    assert _same_weights(
        tmp_path / "cut" / "student" / "model.safetensors", tmp_path / "clean" / "student" / "model.safetensors"
    )


def test_a_teacher_file_changed_under_the_same_name_is_refused(tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    spec = parse_experiment(_cfg()).student
    torch.manual_seed(0)
    _save_model(build_model("cnn", 0.25), teacher, spec, {})
    cfg = _cfg(
        process="offline",
        terms=[{"loss": "kd", "weight": 0.5}],
        teachers=[{"model": "cnn", "width": 0.25, "checkpoint": str(teacher)}],
    )
    cfg["optim"]["epochs"] = 1
    _run(cfg, tmp_path / "run")
    torch.manual_seed(1)
    _save_model(build_model("cnn", 0.25), teacher, spec, {})  # e.g. the earlier run it came from was redone
    with pytest.raises(ResumeError, match=r"teachers\[0\]\.checkpoint_sha256"):
        _run(cfg, tmp_path / "run")


def test_a_folder_with_models_but_no_settings_record_is_refused(tmp_path):
    _run(_cfg(), tmp_path)
    (tmp_path / "experiment.json").unlink()  # as an older npuq left its folders
    with pytest.raises(ResumeError, match="no experiment.json.*cannot be checked"):
        _run(_cfg(), tmp_path)


def test_fit_refuses_a_checkpoint_trained_with_other_settings(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)

    def run(optim, seed=0, images=x, labels=y):
        torch.manual_seed(0)
        student, teacher = build_model("cnn", 0.25), build_model("cnn", 0.5)
        learner = offline_learner(student, [teacher], [Term(KDLoss(), 0.5)], optim)
        return fit(learner, images, labels, optim, seed=seed, out_dir=tmp_path, progress=False)

    run(OptimConfig(lr=0.05, epochs=1, batch_size=32))
    with pytest.raises(ResumeError, match=r"optim\.lr: 0\.05 -> 0\.1"):
        run(OptimConfig(lr=0.1, epochs=1, batch_size=32))
    with pytest.raises(ResumeError, match=r"seed: 0 -> 1"):
        run(OptimConfig(lr=0.05, epochs=1, batch_size=32), seed=1)
    with pytest.raises(ResumeError, match=r"samples: 128 -> 96"):
        run(OptimConfig(lr=0.05, epochs=1, batch_size=32), images=x[:96], labels=y[:96])
    with pytest.raises(ResumeError, match=r"started for 1 epochs and is asked for 2.*cosine"):
        run(OptimConfig(lr=0.05, epochs=2, batch_size=32))
    assert run(OptimConfig(lr=0.05, epochs=1, batch_size=32))["start_epoch"] == 1  # the same: resumed, done


# ------------------------------------------------------------------------------------------ damaged files
@pytest.mark.parametrize(
    "name", ["student/checkpoint.safetensors", "student/model.safetensors", "student/history.json", "experiment.json"]
)
def test_a_truncated_file_is_a_resume_error_naming_it(tmp_path, name):
    _run(_cfg(), tmp_path)
    path = tmp_path / name
    if name == "student/checkpoint.safetensors":
        (tmp_path / "student" / "model.safetensors").unlink()  # the checkpoint is read when no final model is
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResumeError, match=rf"{path}: .*(unreadable|corrupt).*delete"):
        _run(_cfg(), tmp_path)


def test_a_crash_while_a_file_is_written_leaves_the_old_file_or_none(tmp_path, monkeypatch):
    replace, renamed = os.replace, []

    def record(src, dst):
        renamed.append((Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", record)
    _run(_cfg(), tmp_path / "clean")
    written = {dst.relative_to(tmp_path / "clean").as_posix() for _, dst in renamed}
    assert written >= {
        "experiment.json",
        "metrics.json",
        "curves.png",
        "student/checkpoint.safetensors",
        "student/history.json",
        "student/model.safetensors",
    }
    assert all(src.parent == dst.parent for src, dst in renamed)  # a rename within one file system

    def crash_on_the_model(src, dst):
        if Path(dst).name == "model.safetensors":
            raise _Killed("killed while the model was written")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_the_model)
    with pytest.raises(_Killed):
        _run(_cfg(), tmp_path / "cut")
    assert not (tmp_path / "cut" / "student" / "model.safetensors").exists()
    assert [p.name for p in (tmp_path / "cut" / "student").iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.setattr(os, "replace", replace)
    _run(_cfg(), tmp_path / "cut")  # the last checkpoint is complete: the model is written from it
    assert _same_weights(
        tmp_path / "cut" / "student" / "model.safetensors", tmp_path / "clean" / "student" / "model.safetensors"
    )


def test_kill_9_after_a_known_epoch_then_the_same_command_finishes_as_a_clean_run(tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(_cfg(epochs=3, schedule="cosine")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(WORKER), "experiment", str(config), str(tmp_path / "cut"), "2", str(TEST_IMAGES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not (tmp_path / "cut" / "student" / "model.safetensors").exists()
    resumed = _run(_cfg(epochs=3, schedule="cosine"), tmp_path / "cut")
    _run(_cfg(epochs=3, schedule="cosine"), tmp_path / "clean")
    assert [h["epoch"] for h in resumed["histories"]["student"]] == [1, 2, 3]
    assert _same_weights(
        tmp_path / "cut" / "student" / "model.safetensors", tmp_path / "clean" / "student" / "model.safetensors"
    )


def test_runner_check_folder_reports_what_it_found(tmp_path):
    exp = parse_experiment(_cfg())
    assert Runner(exp, tmp_path, progress=False).check_folder() == "new"
    # a start that died before its first epoch left nothing to protect: other settings just replace the record
    assert Runner(parse_experiment(_cfg(seed=5)), tmp_path, progress=False).check_folder() == "new"
    _run(_cfg(), tmp_path)
    assert Runner(exp, tmp_path, progress=False).check_folder() == "same"
    assert Runner(parse_experiment(_cfg(name="x")), tmp_path, progress=False).check_folder() == "changed"
