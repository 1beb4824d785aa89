"""The espeak-ng digits corpus of npuq.speech: plan, signal processing, synthesis and cache.

Tests that run espeak-ng synthesize a handful of utterances into tmp_path. Without espeak-ng they are
skipped with the install command as the reason, except under CI (``NPUQ_CI=1``, set by .ci/run), where
``scripts/setup.sh test`` installs it and a missing program must fail.
"""

import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from npuq import speech as S
from npuq.speech import corpus as C
from support.helpers import on_ci

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(
    not HAVE_ESPEAK and not on_ci(), reason="espeak-ng is not installed (sudo apt-get install espeak-ng)"
)

SMALL = dict(train_size=4, dev_size=2, test_size=2, voices=("en-us", "en-gb"), variants=("m3", "f2", "klatt"))


def small_config(**overrides):
    return S.DigitsConfig(**{**SMALL, **overrides})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny corpus built once for the module: (config, cache_dir, corpus directory)."""
    config = small_config()
    cache = tmp_path_factory.mktemp("digits")
    return config, cache, S.build_digits(config, cache, progress=False)


# ---------------------------------------------------------------------------------------------------
# plan and configuration (no espeak-ng needed)


def test_speaker_split_is_disjoint_complete_and_seeded():
    config = S.DigitsConfig()
    split = S.split_speakers(config)
    sets = {k: set(v) for k, v in split.items()}
    assert not (sets["train"] & sets["dev"]) and not (sets["train"] & sets["test"]) and not (sets["dev"] & sets["test"])
    everyone = {f"{v}+{var}" for v in config.voices for var in config.variants}
    assert sets["train"] | sets["dev"] | sets["test"] == everyone
    assert all(sets.values())
    assert S.split_speakers(S.DigitsConfig()) == split
    assert S.split_speakers(S.DigitsConfig(seed=1)) != split
    plans = S.plan_corpus(small_config(train_size=30, dev_size=10, test_size=10))
    small_split = S.split_speakers(small_config(train_size=30, dev_size=10, test_size=10))
    for name, utterances in plans.items():
        assert {p.speaker for p in utterances} <= set(small_split[name])


def test_split_by_variant_keeps_test_variants_unseen():
    config = S.DigitsConfig(split_by="variant")
    split = S.split_speakers(config)
    variants = {k: {name.split("+", 1)[1] for name in v} for k, v in split.items()}
    assert not (variants["train"] & variants["test"]) and not (variants["train"] & variants["dev"])
    assert not (variants["dev"] & variants["test"])
    assert sum(len(v) for v in split.values()) == len(config.voices) * len(config.variants)
    assert config.digest() != S.DigitsConfig().digest()
    with pytest.raises(ValueError, match="split_by"):
        small_config(split_by="voice")
    with pytest.raises(ValueError, match="at least 3 variants"):
        small_config(split_by="variant", variants=("m1", "m2"))


def test_numpy_integers_are_accepted():
    config = small_config(seed=np.int64(3), train_size=np.int32(5))
    assert type(config.seed) is int and type(config.train_size) is int
    json.dumps(config.to_dict())


def test_plans_are_deterministic_and_transcripts_follow_the_digits():
    config = small_config(train_size=400, dev_size=10, test_size=10)
    a, b = S.plan_corpus(config), S.plan_corpus(config)
    assert a == b
    train = a["train"]
    assert {len(p.words) for p in train} == set(range(1, 8))
    assert all(set(p.words) <= set(S.WORDS) for p in train)
    spoken = [w for p in train for w in p.words]
    assert "oh" in spoken and "zero" in spoken, "both ways of saying 0 occur"
    assert all(p.text == " ".join(p.words) and not any(c.isdigit() for c in p.text) for p in train)
    for p_oh, never in ((1.0, "zero"), (0.0, "oh")):
        plans = S.plan_corpus(small_config(train_size=200, p_oh=p_oh))["train"]
        assert never not in {w for p in plans for w in p.words}
    lo, hi = config.snr_db
    assert all(lo <= p.snr_db <= hi and p.noise in ("white", "pink") for p in train)


def test_config_digest_names_the_cache():
    assert S.DigitsConfig().digest() == S.DigitsConfig().digest()
    assert S.DigitsConfig(seed=1).digest() != S.DigitsConfig().digest()
    assert S.DigitsConfig.from_dict(S.DigitsConfig().to_dict()) == S.DigitsConfig()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(train_size=0), "train_size must be a positive integer"),
        (dict(test_size=-3), "test_size must be a positive integer"),
        (dict(dev_size=2.5), "dev_size must be a positive integer"),
        (dict(snr_db=(30.0, 10.0)), "snr_db"),
        (dict(snr_db=(10.0, float("nan"))), "snr_db"),
        (dict(snr_db=(10.0,)), "snr_db must be a \\(low, high\\) pair"),
        (dict(speed_wpm=(50, 100)), "speed_wpm"),
        (dict(pitch=(10, 120)), "pitch"),
        (dict(min_digits=0), "min_digits"),
        (dict(min_digits=5, max_digits=3), "min_digits"),
        (dict(p_oh=1.5), "p_oh"),
        (dict(noise_kinds=("brown",)), "noise_kinds"),
        (dict(variants=()), "variants"),
        (dict(variants=("m3+f2",)), "variants"),
        (dict(voices=("en-us", "en-us")), "duplicates"),
        (dict(voices=("en-us",), variants=("m3",)), "fewer speakers"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_configs_say_what_is_wrong(overrides, match):
    with pytest.raises(ValueError, match=match):
        small_config(**overrides)


def test_bad_load_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'validation': expected one of train, dev, test"):
        S.load_digits("validation", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="normalize"):
        S.load_digits("train", cache_dir=tmp_path, normalize="cmvn")
    with pytest.raises(TypeError, match="DigitsConfig"):
        S.load_digits("train", config={"seed": 0}, cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="make_digits.py"):
        S.load_digits("train", small_config(), cache_dir=tmp_path, build=False)
    with pytest.raises(ValueError, match="on_corrupt"):
        S.build_digits(small_config(), tmp_path, on_corrupt="ignore")
    with pytest.raises(ValueError, match="workers"):
        S.build_digits(small_config(), tmp_path, workers=0)


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no espeak-ng on PATH
    with pytest.raises(S.EspeakNotFoundError, match="apt-get install espeak-ng"):
        S.find_espeak()
    with pytest.raises(S.EspeakNotFoundError, match="apt-get install espeak-ng"):
        S.load_digits("train", small_config(), cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUQ_DATA_DIR", str(tmp_path))
    assert S.default_cache_dir() == tmp_path / "digits"
    assert S.corpus_dir(small_config()) == tmp_path / "digits" / small_config().digest()
    monkeypatch.delenv("NPUQ_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert S.default_cache_dir() == tmp_path / "xdg" / "npuq" / "digits"


# ---------------------------------------------------------------------------------------------------
# signal processing (no espeak-ng needed)


def _tone(hz, rate, seconds=1.0):
    return np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def test_resampling_keeps_1khz_and_removes_10khz():
    low = S.resample_to_16k(_tone(1000.0, 22050), 22050)
    assert abs(len(low) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(low[1000:-1000] * np.hanning(len(low) - 2000)))
    peak_hz = np.argmax(spectrum) * 16000 / (len(low) - 2000)
    assert abs(peak_hz - 1000.0) < 2.0
    assert np.sqrt(np.mean(low[1000:-1000] ** 2)) == pytest.approx(np.sqrt(0.5), rel=1e-2)
    # 10 kHz lies above the new Nyquist frequency: decimation without a low-pass would fold it to 6 kHz
    high = S.resample_to_16k(_tone(10_000.0, 22050), 22050)
    assert np.sqrt(np.mean(high[1000:-1000] ** 2)) < 1e-2 * np.sqrt(0.5)


def test_resampling_matches_scipy_default():
    from scipy.signal import resample_poly

    x = np.random.default_rng(0).standard_normal(5000)
    np.testing.assert_allclose(S.resample_to_16k(x, 22050), resample_poly(x, 320, 441), atol=1e-12)
    np.testing.assert_array_equal(S.resample_to_16k(x, 16000), x)
    with pytest.raises(ValueError, match="sample rate"):
        S.resample_to_16k(x, 0)


@pytest.mark.parametrize("kind", ["white", "pink"])
@pytest.mark.parametrize("snr_db", [10.0, 17.5, 30.0])
def test_noise_is_added_at_the_asked_snr(kind, snr_db):
    clean = 0.3 * _tone(440.0, 16000) * np.hanning(16000)
    noisy = S.add_noise(clean, snr_db, kind, np.random.default_rng(7))
    noise = noisy - clean
    measured = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=1e-6)
    again = S.add_noise(clean, snr_db, kind, np.random.default_rng(7))
    np.testing.assert_array_equal(noisy, again)


def test_pink_noise_has_equal_power_per_octave():
    def octave_powers(kind):
        noise = C.make_noise(1 << 16, kind, np.random.default_rng(3))
        power = np.abs(np.fft.rfft(noise)) ** 2
        freqs = np.fft.rfftfreq(1 << 16, 1 / 16000)
        return np.array([power[(freqs >= f) & (freqs < 2 * f)].sum() for f in (125, 250, 500, 1000, 2000)])

    pink, white = octave_powers("pink"), octave_powers("white")
    assert np.all(np.abs(np.log2(pink[1:] / pink[:-1])) < 0.2)
    assert np.all(np.abs(np.log2(white[1:] / white[:-1]) - 1.0) < 0.2)


def test_add_noise_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="silent"):
        S.add_noise(np.zeros(100), 20.0, "white", rng)
    with pytest.raises(ValueError, match="noise kind"):
        S.add_noise(np.ones(100), 20.0, "brown", rng)
    with pytest.raises(ValueError, match="snr_db"):
        S.add_noise(np.ones(100), float("inf"), "white", rng)


def test_parse_wav_rejects_garbage():
    with pytest.raises(S.EspeakError, match="not a readable WAV"):
        C.parse_wav(b"not a wav file")


# ---------------------------------------------------------------------------------------------------
# vocabulary and batches (no espeak-ng needed)


def test_vocabulary_round_trip():
    v = S.VOCAB
    assert len(v) == 14 and v.tokens[:3] == ("<pad>", "<sos>", "<eos>")
    assert set(v.words) == {"oh", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    ids = v.encode(["three", "oh", "seven"], add_sos=True, add_eos=True)
    assert ids[0] == v.sos_id and ids[-1] == v.eos_id
    assert v.decode(ids) == ["three", "oh", "seven"]
    assert v.decode(list(ids) + [v.pad_id, v.id("one")]) == ["three", "oh", "seven"]
    with pytest.raises(KeyError, match="'ten' is not in the vocabulary"):
        v.encode(["ten"])
    with pytest.raises(ValueError, match="special tokens"):
        v.encode(["<eos>"])
    with pytest.raises(ValueError, match="out of range"):
        v.decode([99])


def test_collate_pads_features_and_targets():
    torch = pytest.importorskip("torch")
    batch = [
        (np.ones((5, 80), np.float32), S.VOCAB.encode("one two")),
        (2 * np.ones((3, 80), np.float32), S.VOCAB.encode("oh")),
    ]
    out = S.collate(batch, add_sos=True, add_eos=True)
    assert out["features"].shape == (2, 5, 80) and out["features"].dtype == torch.float32
    assert out["feature_lengths"].tolist() == [5, 3]
    assert torch.all(out["features"][1, 3:] == 0) and torch.all(out["features"][1, :3] == 2)
    assert out["target_lengths"].tolist() == [4, 3]
    assert out["targets"][1].tolist() == [S.VOCAB.sos_id, S.VOCAB.id("oh"), S.VOCAB.eos_id, S.VOCAB.pad_id]
    plain = S.collate(batch, as_torch=False)
    assert isinstance(plain["targets"], np.ndarray) and plain["target_lengths"].tolist() == [2, 1]
    with pytest.raises(ValueError, match="empty batch"):
        S.collate([])
    with pytest.raises(ValueError, match="frames, dims"):
        S.collate([(np.ones(80), [3])])


# ---------------------------------------------------------------------------------------------------
# espeak-ng


@needs_espeak
def test_default_voices_and_variants_are_installed():
    assert set(S.DEFAULT_VOICES) <= set(S.available_voices())
    assert set(S.DEFAULT_VARIANTS) <= set(S.available_variants())
    assert len(S.DEFAULT_VOICES) * len(S.DEFAULT_VARIANTS) >= 500


@needs_espeak
def test_variants_change_the_audio_and_unknown_ones_are_refused():
    base, _ = S.synthesize("three oh seven", "en-us")
    m3, rate = S.synthesize("three oh seven", "en-us", "m3")
    f2, _ = S.synthesize("three oh seven", "en-us", "f2")
    assert rate == 22050
    assert not np.array_equal(m3, f2) and not np.array_equal(base, m3)
    # espeak-ng ignores an unknown variant without a word, which would merge two "speakers" into one...
    unknown, _ = S.synthesize("three oh seven", "en-us", "no-such-variant")
    np.testing.assert_array_equal(unknown, base)
    # ...so the corpus checks every variant against the files that exist
    with pytest.raises(ValueError, match="no voice variant \\['no-such-variant'\\]"):
        C.check_speakers(small_config(variants=("m3", "no-such-variant")))
    with pytest.raises(ValueError, match="English voice \\['en-xx'\\]"):
        C.check_speakers(small_config(voices=("en-us", "en-xx")))


@needs_espeak
def test_text_is_spoken_word_by_word():
    def phonemes(text):
        out = subprocess.run(["espeak-ng", "-q", "-x", "-v", "en-us", text], capture_output=True, check=True)
        return out.stdout.decode().split()

    oh, zero = phonemes("three oh seven"), phonemes("three zero seven")
    assert len(oh) == len(zero) == 3
    assert oh[1] != zero[1]
    assert "z" in zero[1] and "z" not in oh[1]


@needs_espeak
def test_rendering_is_deterministic():
    plan = S.plan_corpus(small_config())["train"][0]
    a, b = S.render_utterance(plan), S.render_utterance(plan)
    np.testing.assert_array_equal(a, b)
    assert len(a) > 0.3 * 16000 * len(plan.words) / 4


@needs_espeak
def test_built_corpus_contents(built):
    config, cache, directory = built
    manifest = S.read_manifest(directory, config)
    speakers = {k: set(v) for k, v in manifest["speakers"].items()}
    assert not (speakers["train"] & speakers["test"]) and not (speakers["train"] & speakers["dev"])
    assert not (speakers["dev"] & speakers["test"])
    for split in S.SPLITS:
        data = S.load_digits(split, config, cache, progress=False)
        assert len(data) == config.size(split) == manifest["counts"][split]["utterances"]
        assert set(data.speakers) <= speakers[split]
        for feats, ids, words, info in zip(data.features, data.token_ids, data.transcripts, data.utterances):
            assert feats.dtype == np.float32 and feats.shape == (S.num_frames(info["n_samples"]), 80)
            assert np.all(np.isfinite(feats))
            assert S.VOCAB.decode(ids) == words and 1 <= len(words) <= 7
    assert len(manifest["train_mean"]) == len(manifest["train_std"]) == 80


@needs_espeak
def test_same_seed_same_features(built, tmp_path):
    config, _, directory = built
    other = S.build_digits(config, tmp_path, workers=1, progress=False)
    for split in S.SPLITS:
        name = f"{split}.features.npy"
        np.testing.assert_array_equal(np.load(directory / name), np.load(other / name))
    changed = S.build_digits(small_config(seed=5), tmp_path, progress=False)
    first_frames = np.load(directory / "train.features.npy")[:50]
    assert not np.array_equal(np.load(changed / "train.features.npy")[:50], first_frames)


@needs_espeak
def test_second_load_uses_the_cache(built, monkeypatch):
    config, cache, directory = built

    def no_synthesis(arguments):
        raise AssertionError("espeak-ng must not run when the corpus is cached")

    monkeypatch.setattr(C, "run_espeak", no_synthesis)
    data = S.load_digits("train", config, cache, progress=False)
    assert data.directory == directory
    g = S.load_digits("train", config, cache, normalize="global", progress=False)
    u = S.load_digits("train", config, cache, normalize="utterance", progress=False)
    mean, std = np.array(data.manifest["train_mean"]), np.array(data.manifest["train_std"])
    np.testing.assert_allclose(g.features[0], (data.features[0] - mean) / (std + 1e-5), atol=1e-4)
    np.testing.assert_allclose(u.features[1].mean(axis=0), 0.0, atol=1e-3)


@needs_espeak
def test_corrupt_cache_is_detected_and_rebuilt(built, tmp_path):
    config, _, directory = built
    copy = tmp_path / directory.name
    shutil.copytree(directory, copy)
    features = copy / "dev.features.npy"
    data = bytearray(features.read_bytes())
    data[-7] ^= 0xFF
    features.write_bytes(bytes(data))
    with pytest.raises(S.CorruptCacheError, match="dev.features.npy: SHA-256"):
        S.load_digits("dev", config, tmp_path, on_corrupt="raise", progress=False)
    with pytest.warns(S.CorruptCacheWarning, match="dev.features.npy"):
        rebuilt = S.load_digits("dev", config, tmp_path, progress=False)
    np.testing.assert_array_equal(np.concatenate(rebuilt.features), np.load(directory / "dev.features.npy"))

    (copy / "test.utterances.json").write_text("[]")
    with pytest.raises(S.CorruptCacheError, match="test.utterances.json: 2 bytes"):
        S.read_manifest(copy, config)
    (copy / "manifest.json").write_text('{"format_version": 1, "files": ')
    with pytest.raises(S.CorruptCacheError, match="unreadable manifest"):
        S.read_manifest(copy, config)
    (copy / "manifest.json").unlink()
    with pytest.raises(S.CorruptCacheError, match="manifest.json is missing"):
        S.read_manifest(copy, config)
    manifest = json.loads((directory / "manifest.json").read_text())
    with pytest.raises(S.CorruptCacheError, match="config differs"):
        S.read_manifest(directory, small_config(seed=9))
    assert manifest["config_hash"] == config.digest()


@needs_espeak
def test_interrupted_build_leaves_no_corpus(tmp_path, monkeypatch):
    calls = []
    real = C._featurize

    def fail_on_third(plan):
        calls.append(plan)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(plan)

    monkeypatch.setattr(C, "_featurize", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        S.build_digits(small_config(), tmp_path, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


@needs_espeak
@pytest.mark.slow
def test_default_corpus(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = S.load_digits("train", cache_dir=tmp_path, progress=False)
    manifest = train.manifest
    assert manifest["counts"]["train"]["utterances"] == 4000
    assert manifest["counts"]["test"]["speakers_used"] > 50
