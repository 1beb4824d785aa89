"""The ``asr_digits`` rank-search task: registration and options, WER as the error (equal to npuq.asr's own
evaluation, unchanged by factorization at full rank), sequence distillation, factorized ASR checkpoints.

A small corpus (its own seed, a few dozen utterances) is synthesized into a temporary folder, so that the
tests do not depend on the default corpus cache."""

import copy
import shutil

import pytest
import torch

from npuq._shipped import INSTALL_HINT, checkpoint_dir
from npuq.asr import evaluate_wer, greedy_decode, load_asr_checkpoint, teacher_forcing_batch
from npuq.distill.losses import KDLoss
from npuq.distill.seq2seq import sequence_distillation_loss
from npuq.lrf.factorize import factorizable_layers, factorize, factorized_ranks
from npuq.lrf.layers import FactorizedConv2d, FactorizedLinear, FactorizedLSTM
from npuq.lrf.search.asr_task import AsrDigitsTask, load_asr_lrf_checkpoint, save_asr_lrf_checkpoint
from npuq.lrf.search.config import ConfigError, load_config
from npuq.lrf.search.tasks import TASKS, make_task
from npuq.speech import VOCAB
from support import ROOT
from support.helpers import skip_unless_ci

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORPUS = {"corpus_seed": 7, "corpus_train_size": 24, "corpus_dev_size": 24, "corpus_test_size": 12}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    from npuq.speech import DigitsConfig, build_digits

    if shutil.which("espeak-ng") is None:
        skip_unless_ci("espeak-ng is not installed (apt-get install espeak-ng)")
    shipped = checkpoint_dir()
    assert shipped is not None and (shipped / "asr_digits.safetensors").is_file(), (
        f"the shipped asr_digits checkpoint is missing; {INSTALL_HINT}"
    )
    directory = tmp_path_factory.mktemp("digits")
    config = DigitsConfig(seed=7, train_size=24, dev_size=24, test_size=12)
    build_digits(config, directory, workers=2, progress=False)
    return directory


def small_task(corpus_dir, **options):
    return make_task(
        "asr_digits",
        {
            **CORPUS,
            "cache_dir": str(corpus_dir),
            "dev_size": 24,
            "train_limit": 24,
            "batch_size": 8,
            "progress": False,
            **options,
        },
    )


@pytest.fixture(scope="module")
def shipped():
    model, _ = load_asr_checkpoint("asr_digits")
    return model


def low_rank(model, rank):
    ranks = {
        path: rank
        for path in (
            "encoder_projection",
            "encoder_lstm",
            "decoder_lstm",
            "pre_output",
            "attention_key",
            "attention_query",
        )
    }
    return factorize(model, ranks, above_break_even="ignore")


# ----------------------------------------------------------------------------------- registry, options


def test_registered_and_options_validated():
    assert TASKS["asr_digits"] is AsrDigitsTask
    task = make_task("asr_digits", {"dev_size": 100})
    assert task.options.dev_size == 100 and task.options.model == "asr_digits"
    with pytest.raises(ConfigError, match=r"task\.dev_size: dev_size must be >= 1"):
        make_task("asr_digits", {"dev_size": 0})
    with pytest.raises(ConfigError, match=r"task\.dev_size: .*at most the corpus's 300"):
        make_task("asr_digits", {"dev_size": 301})
    with pytest.raises(ConfigError, match=r"task\.finetune_lr must be a number"):
        make_task("asr_digits", {"finetune_lr": "fast"})
    with pytest.raises(ConfigError, match="unknown key 'beam'"):
        make_task("asr_digits", {"beam": 4})
    with pytest.raises(ConfigError, match=r"task\.kd_weight"):
        make_task("asr_digits", {"kd_weight": -1.0})


@pytest.mark.parametrize("name", ["asr_search.toml", "asr_iterate.toml"])
def test_shipped_configs_validate(name):
    config = load_config(ROOT / "configs" / "lrf" / name)
    assert config.task == "asr_digits"
    assert "encoder_lstm" in config.space.layers and "decoder_lstm" in config.space.layers


# -------------------------------------------------------------------------------------------- errors


def test_dev_error_is_the_greedy_wer_of_npuq_asr(corpus_dir, shipped):
    from npuq.speech import DigitsConfig, load_digits

    task = small_task(corpus_dir, dev_size=20)
    error = task.evaluate(shipped)
    dev = load_digits(
        "dev",
        config=DigitsConfig(seed=7, train_size=24, dev_size=24, test_size=12),
        cache_dir=corpus_dir,
        normalize="utterance",
        build=False,
        progress=False,
    )
    assert error == evaluate_wer(shipped, dev, beam=1, limit=20)["wer"]
    assert error < 0.2
    assert 0 <= task.test_error(shipped) < 0.2
    assert not shipped.training


def test_full_rank_keeps_the_error_and_low_rank_raises_it(corpus_dir, shipped):
    task = small_task(corpus_dir)
    base = task.evaluate(shipped)
    # factorize() keeps a matrix dense at or above its break-even rank, so the full-rank layers are built here
    full = copy.deepcopy(shipped)
    builders = {
        torch.nn.Linear: FactorizedLinear.from_linear,
        torch.nn.Conv2d: FactorizedConv2d.from_conv2d,
        torch.nn.LSTM: FactorizedLSTM.from_lstm,
    }
    for path in factorizable_layers(shipped):
        module = full.get_submodule(path)
        setattr(full, path, builders[type(module)](module, 1.0))
    assert isinstance(full.encoder_lstm, FactorizedLSTM) and isinstance(full.output, FactorizedLinear)
    assert task.evaluate(full) == base
    tiny = factorize(
        shipped, {path: 1 for path in ("encoder_lstm", "decoder_lstm", "pre_output")}, above_break_even="ignore"
    )
    assert task.evaluate(tiny) > base + 0.1


def test_giving_up_on_a_broken_model_returns_a_lower_bound(corpus_dir, shipped):
    from npuq.speech import DigitsConfig, load_digits

    dev = load_digits(
        "dev",
        config=DigitsConfig(seed=7, train_size=24, dev_size=24, test_size=12),
        cache_dir=corpus_dir,
        normalize="utterance",
        build=False,
        progress=False,
    )
    broken = factorize(
        shipped, {path: 1 for path in ("encoder_lstm", "decoder_lstm", "pre_output")}, above_break_even="ignore"
    )
    full = evaluate_wer(broken, dev, batch_size=4)
    early = evaluate_wer(broken, dev, batch_size=4, give_up_above=0.3)
    assert full["complete"] and full["wer"] > 0.3
    assert not early["complete"] and 0.3 < early["wer"] <= full["wer"]
    assert early["words"] == full["words"] and early["word_errors"] <= full["word_errors"]
    # a working model is decoded to the end and gets exactly its WER
    good = evaluate_wer(shipped, dev, batch_size=4, give_up_above=0.3)
    assert good["complete"] and good == {**evaluate_wer(shipped, dev, batch_size=4), "seconds": good["seconds"]}
    for bad in (0, -1.0, float("nan"), "high", True):
        with pytest.raises(ValueError, match="give_up_above"):
            evaluate_wer(shipped, dev, give_up_above=bad)
    # the task passes give_up_wer to its dev evaluation only
    task = small_task(corpus_dir, give_up_wer=0.3, eval_batch=4)
    assert task.evaluate(broken) == early["wer"]
    assert task.evaluate(shipped) == good["wer"]
    with pytest.raises(ConfigError, match=r"task\.give_up_wer"):
        make_task("asr_digits", {"give_up_wer": -0.5})


# -------------------------------------------------------------------------------------- distillation


def test_sequence_distillation_loss_skips_padding():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 5, generator=gen), torch.randn(2, 3, 5, generator=gen)
    targets = torch.tensor([[3, 4, 2], [1, 2, 0]])
    kd = KDLoss(temperature=2.0)
    total, parts = sequence_distillation_loss(student, teacher, targets, kd, kd_weight=0.7, task_weight=0.3)
    valid = targets != 0
    ce = torch.nn.functional.cross_entropy(student[valid], targets[valid])
    assert parts["tokens"] == 5
    assert total.item() == pytest.approx(0.3 * ce.item() + 0.7 * kd(student[valid], teacher[valid]).item())
    # whatever the student says at a padded position does not count
    changed = student.clone()
    changed[1, 2] += 100.0
    again, _ = sequence_distillation_loss(changed, teacher, targets, kd, kd_weight=0.7, task_weight=0.3)
    assert again.item() == pytest.approx(total.item())
    with pytest.raises(ValueError, match="no target token"):
        sequence_distillation_loss(student, teacher, torch.zeros(2, 3, dtype=torch.int64), kd)


class _TinySeq(torch.nn.Module):
    """(B, L) token ids -> (B, L, V) logits: enough of a sequence model for the fine-tuning loop."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(6, 8)
        self.out = torch.nn.Linear(8, 6)

    def forward(self, tokens):
        return self.out(torch.tanh(self.embed(tokens)))


def test_finetune_cosine_schedule_decays_to_zero(monkeypatch):
    from npuq.distill.seq2seq import finetune_seq2seq_with_teacher

    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(1, 6, (4, 5), generator=gen) for _ in range(3)]

    def batches(epoch):
        for tokens in data:
            yield (tokens,), tokens

    seen = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    teacher = _TinySeq(1)
    finetune_seq2seq_with_teacher(
        _TinySeq(0), teacher, batches, epochs=2, lr=0.01, lr_schedule="cosine", total_steps=6, pad_id=0, progress=False
    )
    import math

    assert seen == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])
    seen.clear()
    finetune_seq2seq_with_teacher(_TinySeq(0), teacher, batches, epochs=2, lr=0.01, pad_id=0, progress=False)
    assert seen == [0.01] * 6
    for bad in ({"lr_schedule": "step"}, {"lr_schedule": "cosine"}, {"lr_schedule": "cosine", "total_steps": 0}):
        with pytest.raises(ValueError, match="lr_schedule|total_steps"):
            finetune_seq2seq_with_teacher(_TinySeq(0), teacher, batches, pad_id=0, progress=False, **bad)
    with pytest.raises(ConfigError, match=r"task\.finetune_schedule"):
        make_task("asr_digits", {"finetune_schedule": "linear"})


def _kd_on(task, student, teacher):
    data = task.split("train")
    batch = data.collate(range(16), add_sos=True, add_eos=True)
    inputs, targets = teacher_forcing_batch(batch)
    with torch.no_grad():
        student.eval()
        s = student(batch["features"], batch["feature_lengths"], inputs)
        t = teacher(batch["features"], batch["feature_lengths"], inputs)
    _, parts = sequence_distillation_loss(s, t, targets, KDLoss(temperature=2.0), pad_id=VOCAB.pad_id)
    return parts["kd"]


def test_finetune_lowers_the_kd_loss_and_leaves_the_teacher_alone(corpus_dir, shipped):
    task = small_task(corpus_dir, finetune_lr=1e-3, finetune_epochs=2)
    teacher = copy.deepcopy(shipped)
    before_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = low_rank(shipped, 8)
    kd_before, error_before = _kd_on(task, student, teacher), task.evaluate(student)
    out = task.finetune(student, teacher)
    assert out is student and not student.training and not teacher.training
    assert task.last_finetune["steps"] == 2 * 3
    assert _kd_on(task, student, teacher) < 0.8 * kd_before
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before_state[name]), name
    # it still decodes: hypotheses end with <eos>, and the error stays a rate
    batch = task.split("dev").collate(range(8))
    hypotheses = greedy_decode(student, batch["features"], batch["feature_lengths"])
    assert sum(h.ended for h in hypotheses) >= 6
    assert task.evaluate(student) < error_before


def test_finetune_is_seeded(corpus_dir, shipped):
    task = small_task(corpus_dir, spec_augment=True)
    runs = []
    for _ in range(2):
        student = low_rank(shipped, 8)
        task.distill(student, shipped, steps=2)
        runs.append(student.state_dict())
    for name, value in runs[0].items():
        assert torch.equal(value, runs[1][name]), name


# ------------------------------------------------------------------------------------------ checkpoints


def test_factorized_checkpoint_round_trip(corpus_dir, shipped, tmp_path):
    _, meta = load_asr_checkpoint("asr_digits")
    small = low_rank(shipped, 24)
    ranks = factorized_ranks(small)
    path = save_asr_lrf_checkpoint(small, tmp_path / "small.safetensors", meta, ranks)
    loaded, loaded_meta = load_asr_lrf_checkpoint(path)
    assert loaded_meta["lrf_ranks"] == ranks and "history" not in loaded_meta
    assert isinstance(loaded.decoder_lstm, FactorizedLSTM) and not loaded.training
    batch = small_task(corpus_dir).split("dev").collate(range(6), add_sos=True, add_eos=True)
    inputs, _ = teacher_forcing_batch(batch)
    with torch.no_grad():
        small.eval()
        assert torch.equal(
            loaded(batch["features"], batch["feature_lengths"], inputs),
            small(batch["features"], batch["feature_lengths"], inputs),
        )
    # the task loads it by path, and a dense checkpoint through the same loader
    task = small_task(corpus_dir, model=str(path))
    assert task.evaluate(task.load_model()) == task.evaluate(small)
    assert task.describe()["lrf_ranks"] == ranks
    dense, _ = load_asr_lrf_checkpoint("asr_digits")
    assert not isinstance(dense.encoder_lstm, FactorizedLSTM)
    # tensors that do not fit the recorded ranks are refused with the file named
    from npuq.asr import ASRCheckpointError

    wrong = save_asr_lrf_checkpoint(small, tmp_path / "wrong.safetensors", meta, {**ranks, "pre_output": 5})
    with pytest.raises(ASRCheckpointError, match="do not fit"):
        load_asr_lrf_checkpoint(wrong)
