"""The distillation objective, processes, training loop (resumption) and TOML experiments, on tiny models
and a few hundred Fashion-MNIST images (fast); bad configs fail before training with the key named."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from npuq.cli import main as cli_main
from npuq.distill import (
    ConfigError,
    DistillationObjective,
    OptimConfig,
    Term,
    accuracy,
    finetune_with_teacher,
    fit,
    mutual_learner,
    offline_learner,
)
from npuq.distill.experiment import corrupt, parse_experiment, run_experiment
from npuq.distill.losses import KDLoss
from npuq.distill.taps import TapError
from npuq.models import build_model
from support import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _cnn(width, seed):
    torch.manual_seed(seed)
    return build_model("cnn", width)


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ objective
def test_objective_sums_weighted_terms_and_freezes_teachers():
    student, t1, t2 = _cnn(0.25, 0), _cnn(0.5, 1), _cnn(0.5, 2)
    x, y = _data(8)
    kd = KDLoss(temperature=3.0)
    obj = DistillationObjective(student, [t1, t2], [Term(kd, 0.5)], task_weight=0.25, teacher_weights=[3, 1])
    total, parts = obj(x, y)
    with torch.no_grad():
        s = student(x)
        expected_kd = 0.75 * kd(s, t1(x)) + 0.25 * kd(s, t2(x))
    assert torch.allclose(parts["KDLoss"], expected_kd, rtol=1e-5)
    assert torch.allclose(total, 0.25 * parts["task"] + 0.5 * parts["KDLoss"], rtol=1e-6)
    total.backward()
    assert all(p.grad is None for p in t1.parameters()) and all(not p.requires_grad for p in t2.parameters())
    assert all(p.grad is not None for p in student.parameters())
    # ensemble="logits": one soft target, the weighted mean of the teachers' logits
    obj2 = DistillationObjective(student, [t1, t2], [Term(kd, 1.0)], teacher_weights=[3, 1], ensemble="logits")
    _, parts2 = obj2(x, y)
    with torch.no_grad():
        assert torch.allclose(parts2["KDLoss"], kd(student(x), 0.75 * t1(x) + 0.25 * t2(x)), rtol=1e-5)


def test_objective_rejects_bad_setups_before_training():
    student, teacher = _cnn(0.25, 0), _cnn(0.5, 1)
    with pytest.raises(TapError, match="features.10"):
        DistillationObjective(student, [teacher], [Term(KDLoss(), 1.0, student="features.100", teacher="logits")])
    with pytest.raises(ValueError, match="weight"):
        Term(KDLoss(), -1.0)
    with pytest.raises(ValueError, match="no teacher"):
        DistillationObjective(student, [], [Term(KDLoss(), 1.0)])
    with pytest.raises(ValueError, match="teacher_weights"):
        DistillationObjective(student, [teacher], [Term(KDLoss(), 1.0)], teacher_weights=[-1])
    with pytest.raises(ValueError, match="task_weight"):
        DistillationObjective(student, [teacher], [], task_weight=float("nan"))


# ------------------------------------------------------------------------------------------ training loop
class _FiveClasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(
    "case,match",
    [
        ("no_channel_dim", r"batch of shape \(8, 28, 28\).*does not go through"),
        ("uint8_images", "floating-point"),
        ("float_labels", "integer torch tensor"),
        ("one_hot_labels", "integer torch tensor"),
        ("negative_label", ">= 0"),
        ("label_beyond_classes", r"labels up to 12 does not go through"),
        ("teacher_with_5_classes", "does not go through"),
        ("nan_images", "NaN"),
        ("count_mismatch", "256 images but 255 labels"),
    ],
)
def test_bad_training_data_is_refused_before_any_step(case, match):
    x, y = _data()
    student, teacher = _cnn(0.25, 0), _cnn(0.5, 1)
    if case == "no_channel_dim":
        x = x[:, 0]
    elif case == "uint8_images":
        x = (x * 50).clamp(0, 255).to(torch.uint8)
    elif case == "float_labels":
        y = y.float()
    elif case == "one_hot_labels":
        y = torch.nn.functional.one_hot(y, 10)
    elif case == "negative_label":
        y[3] = -1
    elif case == "label_beyond_classes":
        y[200] = 12  # far from the first batch
    elif case == "teacher_with_5_classes":
        teacher = _FiveClasses()
    elif case == "nan_images":
        x[7, 0, 3, 3] = float("nan")
    elif case == "count_mismatch":
        y = y[:-1]
    before = _params(student)
    optim = OptimConfig(lr=0.1, epochs=1, batch_size=64)
    learner = offline_learner(student, [teacher], [Term(KDLoss(), 0.5)], optim)
    with pytest.raises(ValueError, match=match):
        fit(learner, x, y, optim, progress=False)
    after = _params(student)  # neither a step nor the probe's forward touched weights or BN statistics
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_mutual_learning_refuses_images_its_peers_cannot_take():
    x, y = _data(64)
    optim = OptimConfig(lr=0.1, epochs=1, batch_size=32)
    learner = mutual_learner([_cnn(0.25, 0), _cnn(0.25, 1)], optim)
    with pytest.raises(ValueError, match=r"batch of shape \(8, 3, 28, 28\)"):
        fit(learner, x.repeat(1, 3, 1, 1), y, optim, progress=False)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    x, y = _data(192)
    optim = OptimConfig(lr=0.05, epochs=3, batch_size=32)

    def run(out, max_steps=None):
        student, teacher = _cnn(0.25, 0), _cnn(0.5, 1)
        learner = offline_learner(student, [teacher], [Term(KDLoss(), 0.5)], optim, test=(x[:64], y[:64]))
        summary = fit(learner, x, y, optim, seed=3, out_dir=out, progress=False, max_steps=max_steps)
        return student, summary

    full, s_full = run(tmp_path / "full")
    _, s_cut = run(tmp_path / "cut", max_steps=6)  # "interrupted" after the first epoch (6 steps of 32)
    assert [h["epoch"] for h in s_cut["history"]] == [1]
    resumed, s_res = run(tmp_path / "cut")  # same folder: resumes at epoch 2
    assert [h["epoch"] for h in s_res["history"]] == [1, 2, 3]
    for k, v in _params(full).items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert json.loads((tmp_path / "cut" / "history.json").read_text())[-1]["epoch"] == 3


def test_training_reduces_the_loss_and_mutual_learning_trains_every_peer():
    x, y = _data(256)
    optim = OptimConfig(lr=0.05, epochs=3, batch_size=32)
    peers = [_cnn(0.25, i) for i in range(3)]
    before = [_params(p) for p in peers]
    summary = fit(mutual_learner(peers, optim, test=(x, y)), x, y, optim, progress=False)
    hist = summary["history"]
    assert hist[-1]["train_peer0"] < hist[0]["train_peer0"]
    assert all(any(not torch.equal(v, p.state_dict()[k]) for k, v in b.items()) for b, p in zip(before, peers))
    assert set(hist[-1]) >= {"peer0_test_accuracy", "peer2_test_accuracy", "test_accuracy"}
    with pytest.raises(ValueError, match="2 peers"):
        mutual_learner(peers[:1], optim)


def test_finetune_with_teacher_moves_the_student_towards_the_teacher():
    x, y = _data(256)
    teacher, student = _cnn(0.5, 1), _cnn(0.25, 0)
    kd = KDLoss(temperature=4.0)

    def gap():
        with torch.no_grad():
            teacher.eval(), student.eval()
            return float(kd(student(x), teacher(x)))

    before = gap()
    finetune_with_teacher(
        student,
        teacher,
        x,
        y,
        optim=OptimConfig(lr=0.05, epochs=3, batch_size=32),
        task_weight=0.0,
        kd_weight=1.0,
        hints=[("features.10", "features.10", 0.1)],
        progress=False,
    )
    assert gap() < 0.8 * before


def test_privileged_information_student_sees_the_corrupted_view():
    x, _ = _data(16)
    noisy = corrupt(x, "noise", 0.5, seed=1)
    assert not torch.equal(noisy, x) and torch.equal(noisy, corrupt(x, "noise", 0.5, seed=1))
    occluded = corrupt(x, "occlusion", 0.5, seed=1)
    assert ((occluded != x).flatten(1).sum(1) <= 14 * 14).all() and (occluded != x).any()
    assert torch.equal(corrupt(x, "none", 0.5), x)


# ------------------------------------------------------------------------------------------ configs
BASE = {
    "name": "t",
    "process": "offline",
    "seed": 0,
    "task_weight": 0.5,
    "student": {"model": "cnn", "width": 0.25},
    "teachers": [{"model": "cnn", "width": 0.5, "epochs": 1}],
    "terms": [{"loss": "kd", "weight": 0.5, "temperature": 4.0}],
    "optim": {"lr": 0.05, "epochs": 1, "batch_size": 64},
    "data": {"train_limit": 256},
}


def _with(path, value):
    import copy

    cfg = copy.deepcopy(BASE)
    *head, last = path
    node = cfg
    for k in head:
        node = node[k]
    node[last] = value
    return cfg


@pytest.mark.parametrize(
    "path,value,match",
    [
        (("epochs_typo",), 3, "unknown key.*epochs_typo"),
        (("optim", "lr"), "fast", r"optim.lr must be a number"),
        (("optim", "epochs"), 1.5, r"optim.epochs must be an integer"),
        (("optim", "momentun"), 0.9, "unknown key 'momentun'"),
        (("terms", 0, "weight"), -0.5, "weight must be >= 0"),
        (("terms", 0, "temperature"), 0.0, "temperature"),
        (("terms", 0, "loss"), "kld", "loss must be one of"),
        (("terms", 0, "beta"), 3, "bad argument for loss 'kd'"),
        (("student", "model"), "resnet", "unknown model 'resnet'"),
        (("process",), "online", "process must be one of"),
        (("teachers",), [], "needs at least one"),
        (("data", "corruption"), "blur", "corruption must be one of"),
        (("teachers", 0, "weight"), 0.0, "weights sum to 0"),
        (("ensemble",), "median", "ensemble must be one of"),
    ],
)
def test_bad_configs_name_the_key(path, value, match):
    with pytest.raises(ConfigError, match=match):
        parse_experiment(_with(path, value), "cfg.toml")


def test_teacher_weights_of_the_config_reach_the_objective(tmp_path, monkeypatch):
    import npuq.distill.processes as processes
    from npuq.distill.experiment import Runner

    seen = {}

    def spy(student, teachers, terms, optim, **kw):
        seen["weights"] = kw["teacher_weights"]
        raise KeyboardInterrupt  # stop before training: only the wiring is under test

    monkeypatch.setattr(processes, "offline_learner", spy)
    cfg = _with(
        ("teachers",),
        [
            {"model": "cnn", "width": 0.25, "checkpoint": str(tmp_path / "a.safetensors"), "weight": 3.0},
            {"model": "cnn", "width": 0.25, "checkpoint": str(tmp_path / "a.safetensors"), "weight": 1.0},
        ],
    )
    from npuq.distill.experiment import _save_model

    _save_model(build_model("cnn", width=0.25), tmp_path / "a.safetensors", parse_experiment(cfg).student, {})
    with pytest.raises(KeyboardInterrupt):
        Runner(parse_experiment(cfg), tmp_path / "run", progress=False).run()
    assert seen["weights"] == [3.0, 1.0]


def test_experiment_runs_writes_metrics_and_curves_and_resumes(tmp_path):
    exp = parse_experiment(BASE, "cfg.toml")
    metrics = run_experiment(exp, tmp_path, progress=False)
    final = metrics["final_test_accuracy"]
    assert set(final) == {"teacher0", "student"} and 0.0 <= final["student"] <= 1.0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert (tmp_path / "student" / "model.safetensors").exists()
    # finished runs are loaded, not trained again
    again = run_experiment(exp, tmp_path, progress=False)
    assert again["final_test_accuracy"] == final


def test_cli_distill(tmp_path, capsys):
    cfg = tmp_path / "dml.toml"
    cfg.write_text(
        'name = "dml"\nprocess = "dml"\npeers = 2\n[student]\nmodel = "cnn"\nwidth = 0.25\n'
        "[optim]\nepochs = 1\nbatch_size = 64\n[data]\ntrain_limit = 256\n"
    )
    assert cli_main(["distill", str(cfg), "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["final_test_accuracy"]) == {"peer0", "peer1", "student"}
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nprocess = "offline"\n[optim]\nlr = "high"\n')
    assert cli_main(["distill", str(bad)]) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_accuracy_helper():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x, y = _data(50)
    with torch.no_grad():
        expected = float((model(x).argmax(1) == y).float().mean())
    assert accuracy(model, x, y, batch_size=7) == pytest.approx(expected)


def test_shipped_configs_parse_and_their_taps_exist():
    import glob

    from npuq.distill.experiment import build_loss, load_experiment
    from npuq.distill.objective import tap_channels

    root = ROOT / "configs" / "distill"
    files = sorted(glob.glob(str(root / "*.toml")))
    assert len(files) >= 10
    probe = _data(2)[0]
    for f in files:
        exp = load_experiment(f)
        student = build_model(exp.student.model, exp.student.width)
        for spec in exp.teachers:
            teacher = build_model(spec.model, spec.width)
            terms = [
                Term(
                    build_loss(t, f, tap_channels(student, t.student, probe), tap_channels(teacher, t.teacher, probe))
                    if t.loss == "hint"
                    else build_loss(t, f),
                    t.weight,
                    t.student,
                    t.teacher,
                )
                for t in exp.terms
            ]
            total, _ = DistillationObjective(student, [teacher], terms)(torch.cat([probe, probe]), torch.arange(4))
            assert torch.isfinite(total), f


def test_cli_distill_refuses_a_folder_with_other_settings(tmp_path, capsys):
    """Rerunning with --epochs 2 into a folder trained for 1 epoch once returned the 1-epoch model silently."""
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        'name = "a"\nprocess = "alone"\n[student]\nmodel = "cnn"\nwidth = 0.25\n'
        "[optim]\nepochs = 1\nbatch_size = 64\n[data]\ntrain_limit = 256\n"
    )
    out = str(tmp_path / "run")
    assert cli_main(["distill", str(cfg), "--out", out]) == 0
    assert cli_main(["distill", str(cfg), "--out", out]) == 0
    assert "returning its saved result" in capsys.readouterr().out
    assert cli_main(["distill", str(cfg), "--out", out, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npuq distill: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "optim.epochs: 1 -> 2" in err and "another output folder" in err
