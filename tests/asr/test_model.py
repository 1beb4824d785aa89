"""The attention recognizer of npuq.asr: masking, decoding, training, factorization, checkpoints, and the
shipped model on a small freshly synthesized test set."""

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from npuq.asr import (
    ASRCheckpointError,
    ASRConfig,
    AttentionASR,
    beam_search,
    evaluate_wer,
    greedy_decode,
    load_asr_checkpoint,
    save_asr_checkpoint,
    score_sequences,
    sequence_loss,
    subsampled_lengths,
    teacher_forcing_batch,
)
from npuq.asr.train import TrainOptions, learning_rate, train_asr
from npuq.lrf import FactorizedConv2d, FactorizedLinear, FactorizedLSTM, factorizable_layers, factorize
from npuq.speech import VOCAB, DigitsSplit, collate
from npuq.speech.features import utterance_normalize
from support.helpers import skip_unless_ci

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ASRConfig(
    conv_channels=4,
    encoder_input=16,
    encoder_hidden=12,
    encoder_layers=2,
    embedding_dim=8,
    decoder_hidden=16,
    attention_dim=8,
    location_filters=4,
    location_kernel=5,
    pre_output_dim=12,
    dropout=0.0,
)


def tiny_model(seed=0, config=TINY):
    torch.manual_seed(seed)
    return AttentionASR(config).eval()


def synthetic_split(count, seed=0, name="train"):
    """Utterances whose words are marked by a band of raised mel bins, one band per word."""
    rng = np.random.default_rng(seed)
    features, token_ids, transcripts = [], [], []
    for _ in range(count):
        words = [str(w) for w in rng.choice(VOCAB.words, size=int(rng.integers(1, 4)))]
        frames = rng.normal(size=(24 * len(words) + 9, 80)).astype(np.float32)
        for j, word in enumerate(words):
            band = 6 * (VOCAB.id(word) - 3)
            frames[4 + 24 * j : 22 + 24 * j, band : band + 6] += 4.0
        features.append(utterance_normalize(frames))
        token_ids.append(VOCAB.encode(words))
        transcripts.append(words)
    return DigitsSplit(name, features, token_ids, transcripts, ["synthetic"] * count, [], {})


def padded_batch(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = [torch.randn(n, 80, generator=gen) for n in lengths]
    x = torch.zeros(len(lengths), max(lengths), 80)
    for k, f in enumerate(frames):
        x[k, : len(f)] = f
    return x, torch.tensor(lengths), frames


# ------------------------------------------------------------------------------------ shapes, masks


def test_shapes_and_subsampling():
    model = tiny_model()
    x, lengths, _ = padded_batch([37, 50, 13])
    encoded = model.encode(x, lengths)
    assert encoded.memory.shape == (3, 13, 2 * TINY.encoder_hidden)
    assert encoded.lengths.tolist() == [10, 13, 4] == subsampled_lengths(lengths).tolist()
    assert encoded.mask.sum(1).tolist() == [10, 13, 4]
    targets = torch.tensor([[1, 5, 6, 2], [1, 3, 2, 0], [1, 4, 0, 0]])
    assert model(x, lengths, targets).shape == (3, 4, len(VOCAB))
    # padded encoder frames get no attention
    state = model.initial_state(encoded)
    _, state = model.step(torch.full((3,), VOCAB.sos_id), state, encoded)
    assert torch.all(state.attention[~encoded.mask] == 0)
    torch.testing.assert_close(state.attention.sum(1), torch.ones(3))


def test_padding_does_not_change_outputs():
    model = tiny_model(seed=1)
    x, lengths, frames = padded_batch([41, 70, 9, 64], seed=1)
    # garbage in the padding must not leak in either
    for k, f in enumerate(frames):
        x[k, len(f) :] = 7.0
    targets = torch.tensor([[1, 5, 6, 7, 2], [1, 3, 2, 0, 0], [1, 4, 4, 2, 0], [1, 9, 2, 0, 0]])
    with torch.no_grad():
        together = model(x, lengths, targets)
        for k, f in enumerate(frames):
            alone = model(f[None], torch.tensor([len(f)]), targets[k : k + 1])
            torch.testing.assert_close(together[k : k + 1], alone, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- decoding


def test_greedy_equals_beam_of_one_and_scores_match_teacher_forcing():
    model = tiny_model(seed=2)
    x, lengths, _ = padded_batch([30, 55, 17], seed=2)
    greedy = greedy_decode(model, x, lengths)
    beam = beam_search(model, x, lengths, beam=1)
    for g, b in zip(greedy, beam):
        assert g.tokens == b.tokens and g.ended == b.ended
        assert g.log_prob == pytest.approx(b.log_prob, abs=1e-4)
    # the random model never emits <eos>: the length limit stops it
    limits = model.max_decode_steps(subsampled_lengths(lengths)).tolist()
    assert [g.emitted for g in greedy if not g.ended] == [n for g, n in zip(greedy, limits) if not g.ended]
    scored = score_sequences(model, x, lengths, [g.tokens for g in greedy], ended=[g.ended for g in greedy])
    assert scored == pytest.approx([g.log_prob for g in greedy], abs=1e-4)
    wide = beam_search(model, x, lengths, beam=3, nbest=True)
    for k, hypotheses in enumerate(wide):
        rows = [k] * len(hypotheses)
        rescored = score_sequences(
            model, x[rows], lengths[rows], [h.tokens for h in hypotheses], ended=[h.ended for h in hypotheses]
        )
        assert rescored == pytest.approx([h.log_prob for h in hypotheses], abs=1e-4)


# --------------------------------------------------------------------------------------- training


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = AttentionASR(TINY)
    split = synthetic_split(6)
    batch = split.collate(range(6), add_sos=True, add_eos=True)
    inputs, targets = teacher_forcing_batch(batch)
    assert torch.equal(inputs[:, 0], torch.full((6,), VOCAB.sos_id))
    assert not (inputs == VOCAB.eos_id).any()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = sequence_loss(model(batch["features"], batch["feature_lengths"], inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_learning_rate_schedule():
    options = TrainOptions(lr=1e-3, warmup_steps=10, final_lr_fraction=0.1)
    assert learning_rate(options, 0, 100) == pytest.approx(1e-4)
    assert learning_rate(options, 9, 100) == pytest.approx(1e-3)
    assert learning_rate(options, 100, 100) == pytest.approx(1e-4)


def test_training_resumes_exactly(tmp_path):
    train, dev = synthetic_split(6, seed=3), synthetic_split(2, seed=4, name="dev")
    config = dataclasses.replace(TINY, encoder_layers=1, dropout=0.1)  # dropout: its random draws must resume too
    options = TrainOptions(epochs=2, batch_size=3, warmup_steps=2, patience=5)
    whole = train_asr(train, dev, config, options, out_dir=tmp_path / "whole", progress=False, plot=False)
    first = train_asr(
        train, dev, config, options, out_dir=tmp_path / "sliced", progress=False, stop_after_epoch=1, plot=False
    )
    assert first["epochs_run"] == 1 and first["stopped"].startswith("stopped after epoch 1 of 2")
    resumed = train_asr(train, dev, config, options, out_dir=tmp_path / "sliced", progress=False, plot=False)
    assert resumed["epochs_run"] == 2
    for (name, a), b in zip(whole["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), name
    history = json.loads((tmp_path / "sliced" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    with pytest.raises(ValueError, match="another config or options"):
        train_asr(train, dev, config, TrainOptions(epochs=3, batch_size=3), out_dir=tmp_path / "sliced", progress=False)


# ---------------------------------------------------------------------------------- factorization


def test_runs_after_factorization_with_equal_outputs_at_full_rank():
    model = tiny_model(seed=5)
    layers = factorizable_layers(model)
    for path in (
        "conv1",
        "conv2",
        "encoder_projection",
        "encoder_lstm",
        "attention_key",
        "attention_query",
        "attention_location",
        "decoder_lstm",
        "pre_output",
        "output",
    ):
        assert path in layers, path
    full = copy.deepcopy(model)
    builders = {
        torch.nn.Linear: FactorizedLinear.from_linear,
        torch.nn.Conv2d: FactorizedConv2d.from_conv2d,
        torch.nn.LSTM: FactorizedLSTM.from_lstm,
    }
    for path in layers:
        module = full.get_submodule(path)
        setattr(full, path, builders[type(module)](module, 1.0))  # all top-level attributes
    assert isinstance(full.decoder_lstm, FactorizedLSTM) and isinstance(full.encoder_lstm, FactorizedLSTM)
    x, lengths, _ = padded_batch([33, 48], seed=5)
    targets = torch.tensor([[1, 5, 6, 2], [1, 3, 2, 0]])
    with torch.no_grad():
        torch.testing.assert_close(full(x, lengths, targets), model(x, lengths, targets), atol=2e-5, rtol=1e-4)
    assert [h.tokens for h in greedy_decode(full, x, lengths)] == [h.tokens for h in greedy_decode(model, x, lengths)]
    # factorize() itself, at ranks that pay off: the model still decodes
    small = factorize(model, {"encoder_lstm": 4, "decoder_lstm": 4, "encoder_projection": 4, "pre_output": 4})
    assert isinstance(small.encoder_lstm, FactorizedLSTM)
    assert len(beam_search(small, x, lengths, beam=2)) == 2


# ------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model(seed=6)
    path = save_asr_checkpoint(model, tmp_path / "tiny.safetensors", {"epochs": 3, "history": [{"epoch": 1}]})
    loaded, meta = load_asr_checkpoint(path)
    assert loaded.config == TINY and not loaded.training
    assert meta["epochs"] == 3 and meta["history"] == [{"epoch": 1}] and meta["config"] == TINY.to_dict()
    x, lengths, _ = padded_batch([20, 28], seed=6)
    targets = torch.tensor([[1, 5, 2], [1, 3, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(x, lengths, targets), model(x, lengths, targets))

    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "x"})
    with pytest.raises(ASRCheckpointError, match="not an ASR checkpoint"):
        load_asr_checkpoint(tmp_path / "other.safetensors")
    bigger = save_asr_checkpoint(tiny_model(), tmp_path / "bigger.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(bigger), "pt") as f:
        raw = dict(f.metadata())
    tensors = load_file(str(bigger))
    tensors.pop("output.bias")
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=raw)
    with pytest.raises(ASRCheckpointError, match="missing 1"):
        load_asr_checkpoint(tmp_path / "broken.safetensors")
    with pytest.raises(FileNotFoundError, match="no ASR checkpoint"):
        load_asr_checkpoint("no_such_model")


def test_image_checkpoint_listing_leaves_the_asr_checkpoint_out(tmp_path):
    from npuq.models.checkpoints import CheckpointMismatchError, list_checkpoints, load_checkpoint

    save_asr_checkpoint(tiny_model(), tmp_path / "speech.safetensors")
    assert list_checkpoints(tmp_path) == []
    with pytest.raises(CheckpointMismatchError, match="load_asr_checkpoint"):
        load_checkpoint(tmp_path / "speech.safetensors")


# ------------------------------------------------------------------------------------- bad input


def test_bad_input_errors():
    model = tiny_model()
    x, lengths, _ = padded_batch([20, 12])
    with pytest.raises(ValueError, match="80 log-mel"):
        model.encode(torch.zeros(2, 20, 40), lengths)
    with pytest.raises(ValueError, match="at least one frame"):
        model.encode(x, torch.tensor([20, 0]))
    with pytest.raises(ValueError, match="exceeds"):
        model.encode(x, torch.tensor([21, 12]))
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        model.encode(x, torch.tensor([20]))
    with pytest.raises(ValueError, match="3-D"):
        model.encode(x[0], lengths)
    with pytest.raises(TypeError, match="floating-point"):
        model.encode(x.long(), lengths)
    with pytest.raises(ValueError, match="NaN"):
        model.encode(torch.full((1, 5, 80), float("nan")), torch.tensor([5]))
    with pytest.raises(ValueError, match="token ids"):
        model(x, lengths, torch.tensor([[1, 99], [1, 2]]))
    with pytest.raises(ValueError, match="beam"):
        beam_search(model, x, lengths, beam=0)
    with pytest.raises(ValueError, match="n_mels must be 80"):
        ASRConfig(n_mels=40)
    with pytest.raises(ValueError, match="encoder_hidden"):
        ASRConfig(encoder_hidden=0)
    raw = synthetic_split(3)
    raw.features = [f * 3 - 10 for f in raw.features]  # not normalized per utterance
    with pytest.raises(ValueError, match="normalize='utterance'"):
        evaluate_wer(model, raw)


# --------------------------------------------------------------------------------- shipped model


@pytest.fixture(scope="module")
def small_test_set(tmp_path_factory):
    """50 utterances of a dedicated small corpus (seed 7, its own speaker split), synthesized here."""
    from npuq.speech import DigitsConfig, load_digits

    if shutil.which("espeak-ng") is None:
        skip_unless_ci("espeak-ng is not installed (apt-get install espeak-ng)")
    config = DigitsConfig(seed=7, train_size=1, dev_size=1, test_size=50)
    return load_digits(
        "test",
        config=config,
        cache_dir=tmp_path_factory.mktemp("digits"),
        normalize="utterance",
        workers=2,
        progress=False,
    )


def test_shipped_checkpoint_reaches_its_error_rate(small_test_set):
    model, meta = load_asr_checkpoint("asr_digits")
    for key in ("config", "command", "torch_version", "seed", "epochs", "results", "train_seconds"):
        assert key in meta, key
    recorded = meta["results"]["test_greedy"]["wer"]
    assert recorded < 0.05
    assert 0.5e6 < model.num_parameters() < 1.5e6
    scores = evaluate_wer(model, small_test_set, beam=1)
    assert scores["utterances"] == 50
    assert scores["wer"] < max(0.15, recorded + 0.10)
    # a wider beam finds hypotheses at least as probable as greedy's (raw log-probability)
    batch = collate([small_test_set[i] for i in range(6)])
    greedy = greedy_decode(model, batch["features"], batch["feature_lengths"])
    beam = beam_search(model, batch["features"], batch["feature_lengths"], beam=4, length_penalty=0.0)
    for g, b in zip(greedy, beam):
        assert b.log_prob >= g.log_prob - 1e-4
