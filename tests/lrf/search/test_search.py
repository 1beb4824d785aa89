"""The automatic rank search of npuq.lrf.search on toy models with synthetic errors of known optimum, plus its
configs, storage errors, resumption and command line (docs/lrf_search.md)."""

import json
import time

import pytest
import torch
import torch.nn as nn

from npuq.lrf import compression_report, factorize, factorized_ranks
from npuq.lrf.search import (
    Evaluator,
    ReinforceConfig,
    SearchSpace,
    StorageError,
    densify,
    iterate,
    optuna_search,
    pareto_front,
    reinforce_search,
)
from npuq.lrf.search.config import ConfigError, load_config, parse_config
from npuq.lrf.search.iterate import StateError
from support import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENSITIVE = "2"  # the layer of the toy model whose compression costs 20 points of error


def toy_model(width=32):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def toy_error(model):
    """0.1, plus 0.2 when the sensitive layer is factorized, plus a little for every other factorized layer
    (the more the lower its rank): the best models keep layer 2 dense and compress the others."""
    error = 0.1
    for row in compression_report(model).layers:
        if row.rank is None:
            continue
        error += 0.2 if row.path == SENSITIVE else 0.002 * (1 - row.rank / row.break_even)
    return error


class Counting:
    def __init__(self, fn=toy_error):
        self.fn, self.calls = fn, 0

    def __call__(self, model):
        self.calls += 1
        return self.fn(model)


# ------------------------------------------------------------------------------------------ space
def test_space_sizes_match_the_built_models():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.Flatten(), nn.Linear(512, 10))
    model.add_module("rnn", nn.LSTM(8, 12, num_layers=2, bidirectional=True))
    space = SearchSpace(model, fractions=(0.1, 0.4, 0.8))
    assert len(space) == 3 + 8  # two convs, the linear, 8 gate matrices of the LSTM
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        candidate = tuple(torch.randint(0, space.n_choices, (len(space),), generator=generator).tolist())
        built = space.build(candidate)
        report = compression_report(built)
        assert space.size(candidate) == report.model_params_after
        assert space.size(candidate) == sum(p.numel() for p in built.parameters())
        assert space.compression(candidate) == pytest.approx(report.model_params_before / report.model_params_after)
        assert json.loads(json.dumps(space.ranks(candidate))) == space.ranks(candidate)
        assert factorized_ranks(built) == space.ranks(candidate)
    assert space.size(space.uncompressed) == sum(p.numel() for p in model.parameters())
    layers = SearchSpace(model, layers=["rnn"], scope="layers")
    assert {slot.path for slot in layers.slots} == {"rnn"} and layers.compression(layers.uncompressed) == 1.0


def test_space_rejects_bad_arguments():
    model = toy_model()
    with pytest.raises(ValueError, match="match no factorizable layer"):
        SearchSpace(model, layers=["nope*"])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SearchSpace(model, fractions=(0.5, 1.5))
    space = SearchSpace(model)
    with pytest.raises(ValueError, match="4 choice indices"):
        space.key((0, 1))
    with pytest.raises(ValueError, match="choice for '0'"):
        space.key((99, 0, 0, 0))


def test_search_again_on_a_factorized_model_is_capped_and_exact():
    model = toy_model()
    small = factorize(model, {"0": 6, "4": 3}, above_break_even="ignore")
    dense, ranks = densify(small)
    assert ranks == {"0": 6, "4": 3} and not factorized_ranks(dense)
    x = torch.randn(5, 32)
    torch.testing.assert_close(dense(x), small(x), rtol=1e-5, atol=1e-5)
    space = SearchSpace(small, reference_size=compression_report(model).model_params_before)
    table = dict(zip([slot.path for slot in space.slots], space.rank_table()))
    assert max(r for r in table["0"] if r is not None) == 6 and max(r for r in table["4"] if r is not None) == 3
    keep = space.uncompressed
    assert space.ranks(keep) == {"0": 6, "4": 3}
    torch.testing.assert_close(space.build(keep)(x), small(x), rtol=1e-4, atol=1e-4)
    assert space.compression(keep) == pytest.approx(compression_report(small).model_ratio)


# ------------------------------------------------------------------------------------ evaluation
def test_identical_candidates_are_evaluated_once():
    space = SearchSpace(toy_model())
    evaluate = Counting()
    evaluator = Evaluator(space, evaluate, baseline_error=0.1)
    first = evaluator((0, 8, 1, 2))
    again = evaluator((0, 8, 1, 2))
    assert evaluate.calls == 1 and again.cached and again.error == first.error
    # another candidate with the same resolved ranks costs nothing either
    capped = SearchSpace(factorize(toy_model(), {"0": 1}, above_break_even="ignore"))
    evaluator = Evaluator(capped, evaluate, baseline_error=0.1)
    evaluator((0, 8, 8, 8))
    evaluator((3, 8, 8, 8))
    assert evaluate.calls == 2 and evaluator.evaluations == 1 and len(evaluator.history) == 2


# ------------------------------------------------------------------------------------- REINFORCE
def test_reinforce_learns_to_keep_the_sensitive_layer():
    space = SearchSpace(toy_model())
    evaluate = Counting()
    result = reinforce_search(Evaluator(space, evaluate), target=2.0, budget=200, seed=0, progress=False)
    rewards = result.extra["rewards"]
    assert len(result.history) == len(rewards) == 200
    assert result.evaluations == evaluate.calls < 200  # memoized (the uncompressed model included)
    early, late = sum(rewards[:40]) / 40, sum(rewards[-40:]) / 40
    assert late > early + 3
    sensitive = [slot.path for slot in space.slots].index(SENSITIVE)
    assert result.history[-1].candidate[sensitive] == space.n_choices - 1  # the trained policy keeps it dense
    best = result.best
    assert best is not None and SENSITIVE not in best.ranks and best.compression >= 2.0
    assert result.at_target.error < 0.11


def test_reinforce_is_deterministic_for_a_seed():
    space = SearchSpace(toy_model())
    runs = [
        reinforce_search(Evaluator(space, toy_error), target=2.0, budget=40, seed=seed, progress=False)
        for seed in (3, 3, 4)
    ]
    candidates = [[r.candidate for r in run.history] for run in runs]
    assert candidates[0] == candidates[1] != candidates[2]
    assert runs[0].extra["rewards"] == runs[1].extra["rewards"]


def test_reinforce_config_is_checked():
    with pytest.raises(ValueError, match="batch_size"):
        ReinforceConfig(batch_size=0)
    with pytest.raises(ValueError, match="baseline_decay"):
        ReinforceConfig(baseline_decay=1.0)


@pytest.mark.parametrize("target", [1.2, 2.0, 4.0, 7.0])
def test_start_probabilities_put_the_mean_candidate_at_the_target(target):
    space = SearchSpace(toy_model(), fractions=(0.05, 0.1, 0.2, 0.4, 0.7))
    q = space.start_probabilities(target)
    assert len(q) == space.n_choices and sum(q) == pytest.approx(1.0) and min(q) >= 0
    assert 0.05 - 1e-12 <= q[-1] <= 0.95 + 1e-12
    assert space.reference_size / space.expected_size(q) == pytest.approx(target, rel=1e-6)
    if target >= 4.0:  # beyond what "keep" alone can do: the shares tilt towards the smaller ranks
        assert q[0] > q[1] > q[2]
    # the first batch of an "auto" controller is drawn from exactly these probabilities
    evaluator = Evaluator(space, toy_error)
    config = ReinforceConfig(batch_size=200, keep_prior="auto")
    result = reinforce_search(evaluator, target=target, budget=201, config=config, seed=0, progress=False)
    first = result.history[:200]
    mean_size = sum(r.size for r in first) / len(first)
    assert mean_size == pytest.approx(space.expected_size(q), rel=0.08)
    assert result.extra["policy"]["start_probabilities"] == q


def test_start_probabilities_of_a_target_out_of_reach():
    space = SearchSpace(toy_model(), fractions=(0.5, 0.7))
    q = space.start_probabilities(100.0)  # even the smallest ranks everywhere do not get there
    assert q[0] > 0.9 and q[-1] == pytest.approx(0.05)
    low = SearchSpace(toy_model()).start_probabilities(1.0001)
    assert low[-1] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="target"):
        space.start_probabilities(0.0)
    with pytest.raises(ValueError, match="probabilities"):
        space.expected_size([0.5, 0.5])
    with pytest.raises(ValueError, match="keep_prior"):
        ReinforceConfig(keep_prior="sometimes")
    with pytest.raises(ValueError, match="keep_prior"):
        ReinforceConfig(keep_prior=True)


def test_choose_prefers_a_usable_step_when_the_target_was_not_reached():
    from npuq.lrf.search.evaluation import Record
    from npuq.lrf.search.result import SearchResult

    def record(compression, error):
        return Record((0,), {"x": int(compression * 10)}, int(1000 / compression), compression, error)

    history = [record(1.5, 0.10), record(1.8, 0.105), record(2.2, 3.0)]
    result = SearchResult("reinforce", 3.0, 0.10, 0.11, history)
    assert result.at_target is None
    assert result.choose().compression == 1.8  # not the broken 2.2x point of the front
    broken = SearchResult("reinforce", 3.0, 0.10, 0.11, [record(1.5, 0.5), record(2.2, 3.0)])
    assert broken.choose().compression == 2.2  # nothing usable: the most compressed point of the front
    reached = SearchResult("reinforce", 2.0, 0.10, 0.11, history)
    assert reached.choose().compression == 2.2  # the target decides when it was reached


# ---------------------------------------------------------------------------------------- Optuna
def _dominates(a, b):
    return a.error <= b.error and a.size <= b.size and (a.error < b.error or a.size < b.size)


def test_nsga2_returns_a_non_dominated_front():
    space = SearchSpace(toy_model(), fractions=(0.1, 0.3, 0.6))
    evaluate = Counting()
    result = optuna_search(
        Evaluator(space, evaluate), target=2.0, n_trials=40, population_size=8, seed=0, progress=False
    )
    assert len(result.history) == 40 and evaluate.calls <= 41
    front = result.front
    assert front and all(not _dominates(other, point) for point in front for other in result.history)
    # every record off the front is dominated by (or equal to) a point on it
    keys = {json.dumps(p.ranks, sort_keys=True) for p in front}
    for record in result.history:
        if json.dumps(record.ranks, sort_keys=True) not in keys:
            assert any(_dominates(p, record) or (p.error == record.error and p.size == record.size) for p in front)
    assert pareto_front(result.history) == front
    assert result.at_target is None or SENSITIVE not in result.at_target.ranks or result.at_target.error > 0.29


def test_tpe_and_sqlite_storage_resume(tmp_path):
    space = SearchSpace(toy_model(), fractions=(0.1, 0.5))
    db = tmp_path / "study.db"
    first = optuna_search(
        Evaluator(space, toy_error),
        target=2.0,
        n_trials=4,
        sampler="tpe",
        storage=str(db),
        study_name="toy",
        progress=False,
    )
    assert len(first.history) == 4
    evaluate = Counting()
    more = optuna_search(
        Evaluator(space, evaluate),
        target=2.0,
        n_trials=6,
        sampler="tpe",
        storage=str(db),
        study_name="toy",
        progress=False,
    )
    assert len(more.history) == 6 and evaluate.calls <= 2  # two new trials; the baseline came from the study
    other = SearchSpace(toy_model(), fractions=(0.2,))
    with pytest.raises(StorageError, match="another search space"):
        optuna_search(
            Evaluator(other, toy_error), target=2.0, n_trials=1, storage=str(db), study_name="toy", progress=False
        )


def test_unreachable_database_fails_fast():
    space = SearchSpace(toy_model())
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot open the study storage postgresql.*127\.0\.0\.1"):
        optuna_search(
            Evaluator(space, toy_error),
            target=2.0,
            n_trials=1,
            storage="postgresql://nobody@127.0.0.1:1/x",
            connect_timeout=3,
            progress=False,
        )
    assert time.monotonic() - start < 10


def test_corrupt_database_file_is_a_clear_error(tmp_path):
    space = SearchSpace(toy_model())
    bad = tmp_path / "study.db"
    bad.write_bytes(b"this is not a database" * 50)
    with pytest.raises(StorageError, match="not an SQLite database"):
        optuna_search(Evaluator(space, toy_error), target=2.0, n_trials=1, storage=str(bad), progress=False)
    good = tmp_path / "good.db"
    optuna_search(Evaluator(space, toy_error), target=2.0, n_trials=1, storage=str(good), progress=False)
    data = good.read_bytes()
    good.write_bytes(data[:100] + b"\xff" * (len(data) - 100))  # a valid header over garbage
    with pytest.raises(StorageError, match="cannot open the study storage"):
        optuna_search(Evaluator(space, toy_error), target=2.0, n_trials=1, storage=str(good), progress=False)


# ------------------------------------------------------------------------------------- iterating
class Interrupt(RuntimeError):
    pass


def test_iterate_two_rounds_resumes_after_an_interruption(tmp_path):
    model = toy_model()
    evaluate = Counting()
    finetuned = []

    def finetune(m):
        finetuned.append(m)
        if len(finetuned) == 2:
            raise Interrupt("killed in round 2")
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1.01)  # the weights change, so round 2 must decompose them again
        return m

    options = dict(
        evaluate=evaluate,
        finetune=finetune,
        targets=[1.5, 2.5],
        out_dir=tmp_path,
        budget_per_round=24,
        strategy="reinforce",
        reinforce=ReinforceConfig(batch_size=4),
        progress=False,
    )
    with pytest.raises(Interrupt):
        iterate(model, **options)
    assert (tmp_path / "round_1" / "state.json").exists() and not (tmp_path / "round_2").exists()
    calls_round_1 = evaluate.calls
    result = iterate(model, **options)
    assert len(finetuned) == 3  # round 1 was not fine-tuned again
    assert evaluate.calls - calls_round_1 <= 24 + 1  # round 2's search and its fine-tuned model only
    first, second = result.rounds
    assert first["compression"] >= 1.5 and second["compression"] >= 2.5
    for name, rank in first["ranks"].items():
        assert second["ranks"].get(name, 10**9) <= rank  # a re-search never grows a layer back
    log = json.loads((tmp_path / "candidates.json").read_text())
    assert {entry["search"] for entry in log} == {"round 1", "round 2"}
    assert all({"ranks", "size", "compression", "error"} <= set(entry) for entry in log)
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert compression_report(result.model).model_ratio == pytest.approx(second["compression"])
    # a finished run is loaded, not recomputed
    calls = evaluate.calls
    iterate(model, **options)
    assert evaluate.calls == calls
    # more targets appended: the two rounds are loaded, only the third one runs
    longer = iterate(model, **{**options, "targets": [1.5, 2.5, 3.0]})
    assert len(finetuned) == 4 and longer.rounds[:2] == result.rounds
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["targets"] == [1.5, 2.5, 3.0]
    for changed in (
        {"targets": [1.5, 3.0, 4.0, 5.0]},
        {"targets": [1.5]},
        {"budget_per_round": 12},
        {"targets": [1.5, 2.5, 3.0, 4.0], "single_shot": True},
    ):
        with pytest.raises(StateError, match="other settings"):
            iterate(model, **{**options, **changed})


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    options = dict(
        evaluate=toy_error,
        finetune=lambda m: m,
        targets=[1.5],
        out_dir=tmp_path,
        budget_per_round=8,
        reinforce=ReinforceConfig(batch_size=4),
        progress=False,
    )
    iterate(toy_model(), **options)
    (tmp_path / "round_1" / "state.json").write_text('{"round": 1, "ranks": {')
    with pytest.raises(StateError, match=r"state.json: the round state is corrupt"):
        iterate(toy_model(), **options)
    (tmp_path / "round_1" / "state.json").unlink()
    iterate(toy_model(), **options)
    (tmp_path / "round_1" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(StateError, match="model.safetensors: the fine-tuned weights are unreadable"):
        iterate(toy_model(), **options)
    with pytest.raises(StateError, match="other settings"):
        iterate(toy_model(), **{**options, "targets": [1.2]})


# ---------------------------------------------------------------------------------------- configs
GOOD = {
    "name": "t",
    "strategy": "nsga2",
    "task": {"name": "fashion_mnist", "dev_size": 100},
    "space": {"fractions": [0.2, 0.5]},
    "search": {"target": 2.0, "budget": 10},
    "optuna": {"storage": "", "population_size": 4},
}


@pytest.mark.parametrize(
    "change, key",
    [
        ({"budgett": 3}, "budgett"),
        ({"seed": "zero"}, "seed"),
        ({"strategy": "annealing"}, "strategy"),
        ({"space": {"fractions": [0.2, 1.5]}}, "fractions"),
        ({"space": {"fractions": "0.2"}}, "space.fractions"),
        ({"space": {"layer": ["x"]}}, "layer"),
        ({"search": {"budget": 0}}, "search.budget"),
        ({"search": {"target": "2x"}}, "search.target"),
        ({"iterate": {"targets": [3.0, 2.0]}}, "iterate.targets"),
        ({"reinforce": {"lr": -1.0}}, "reinforce.lr"),
        ({"reinforce": {"keep_prior": "always"}}, "reinforce.keep_prior"),
        ({"reinforce": {"keep_prior": 1.5}}, "reinforce.keep_prior"),
        ({"optuna": {"grace_period": 1, "heartbeat_interval": 5}}, "optuna.grace_period"),
        ({"optuna": {"storage": 5}}, "optuna.storage"),
        ({"task": {"name": "speech"}}, "task.name"),
        ({"task": {"name": "fashion_mnist", "dev_sise": 100}}, "dev_sise"),
        ({"task": {"name": "fashion_mnist", "dev_size": 1.5}}, "task.dev_size"),
        ({"task": {"name": "fashion_mnist", "dev_size": 0}}, "task.dev_size"),
    ],
)
def test_bad_configs_name_the_key(change, key):
    table = {**GOOD, **change}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(table, "bad.toml")


def test_shipped_configs_are_valid():

    folder = ROOT / "configs" / "lrf"
    configs = sorted(folder.glob("*.toml"))
    assert {p.name for p in configs} >= {"mobilenet_v2_search.toml", "mobilenet_v2_iterate.toml"}
    for path in configs:
        config = load_config(path)
        assert config.task in ("fashion_mnist", "asr_digits")
    assert parse_config(GOOD).optuna.options()["storage"] is None


# ------------------------------------------------------------------------------------ command line
def test_cli_report_and_apply_on_a_shipped_mobilenet(tmp_path, capsys):
    from npuq.cli import main

    assert main(["lrf", "report", "mobilenet_v2_w0.5_sgd", "--json"]) == 0
    dense = json.loads(capsys.readouterr().out)
    assert dense["model_params_after"] == dense["model_params_before"] == 200074
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps({"model": "mobilenet_v2_w0.5_sgd", "ranks": {"features.12.0": 16, "classifier": 4}}))
    assert main(["lrf", "report", str(ranks)]) == 0
    assert "features.12.0" in capsys.readouterr().out
    out = tmp_path / "small.safetensors"
    assert main(["lrf", "apply", "--model", "mobilenet_v2_w0.5_sgd", "--ranks", str(ranks), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["lrf", "report", str(out), "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    saved = 640 * 80 - 16 * (640 + 80) + 10 * 640 - 4 * (10 + 640)
    assert small["model_params_after"] == 200074 - saved
    from npuq.lrf.search.tasks import load_lrf_checkpoint

    model, meta = load_lrf_checkpoint(out)
    assert factorized_ranks(model) == {"features.12.0": 16, "classifier": 4}
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ranks": {"features.99": 3}}))
    assert main(["lrf", "apply", "--model", "mobilenet_v2_w0.5_sgd", "--ranks", str(bad), "--out", str(out)]) == 2
    assert "features.99" in capsys.readouterr().err


def test_cli_report_and_apply_on_the_speech_recognizer(tmp_path, capsys):
    from npuq.cli import main
    from npuq.lrf.search.asr_task import load_asr_lrf_checkpoint

    assert main(["lrf", "report", "asr_digits", "--json"]) == 0
    dense = json.loads(capsys.readouterr().out)
    assert dense["model_params_after"] == dense["model_params_before"] == 1321470
    ranks = {"encoder_lstm": {"weight_ih_l0": 16, "weight_hh_l0_reverse": 8}, "output": 4}
    state = tmp_path / "state.json"  # a round's state.json carries "ranks" (and no model name)
    state.write_text(json.dumps({"round": 1, "ranks": ranks}))
    assert main(["lrf", "report", str(state)]) == 2
    assert "give --model" in capsys.readouterr().err
    assert main(["lrf", "report", str(state), "--model", "asr_digits", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    out = tmp_path / "small.safetensors"
    assert main(["lrf", "apply", "--model", "asr_digits", "--ranks", str(state), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["lrf", "report", str(out), "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["model_params_after"] == planned["model_params_after"] < 1321470
    model, meta = load_asr_lrf_checkpoint(out)
    assert factorized_ranks(model) == ranks and meta["lrf_ranks"] == ranks
    # a factorized checkpoint is not factorized again
    assert (
        main(["lrf", "apply", "--model", str(out), "--ranks", str(state), "--out", str(tmp_path / "x.safetensors")])
        == 2
    )
    assert "factorized already" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"decoder_lstm": {"weight_ih_l9": 3}}))
    assert main(["lrf", "apply", "--model", "asr_digits", "--ranks", str(bad), "--out", str(out)]) == 2
    assert "weight_ih_l9" in capsys.readouterr().err


def test_cli_bad_config_is_reported(tmp_path, capsys):
    from npuq.cli import main

    config = tmp_path / "c.toml"
    config.write_text('name = "x"\n[search]\nbudgte = 3\n')
    assert main(["lrf", "search", str(config)]) == 2
    assert "budgte" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_search_and_iterate_on_a_shipped_mobilenet(tmp_path, capsys):
    from npuq.cli import main

    config = tmp_path / "tiny.toml"
    config.write_text("""
name = "tiny"
strategy = "nsga2"
[task]
name = "fashion_mnist"
dev_size = 64
test_limit = 64
train_limit = 64
batch_size = 32
progress = false
[space]
layers = ["features.12.0", "classifier"]
fractions = [0.2, 0.5]
[search]
target = 1.1
budget = 4
[iterate]
targets = [1.1, 1.2]
budget_per_round = 3
single_shot = false
[optuna]
population_size = 2
""")
    out = tmp_path / "search"
    assert main(["lrf", "search", str(config), "--out", str(out), "--storage", str(tmp_path / "s.db")]) == 0
    summary = json.loads((out / "search.json").read_text())
    assert len(summary["history"]) == 4 and summary["space"]["slots"][0]["name"] == "features.12.0"
    assert "tiny: 4 candidates" in capsys.readouterr().out
    run = tmp_path / "iterate"
    assert main(["lrf", "iterate", str(config), "--out", str(run)]) == 0
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["compression"] >= rounds[0]["compression"]
    assert "| 2 | 1.2x |" in capsys.readouterr().out
