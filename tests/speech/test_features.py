"""Log-mel features of npuq.speech against a loop-by-loop reference and known signals."""

import numpy as np
import pytest

from npuq.speech import features as F

RNG = np.random.default_rng(1234)


def reference_log_mel(signal):
    """The definition of docs/speech.md written out with loops and an explicit DFT."""
    win, hop, n_fft, n_mels, sr = 400, 160, 512, 80, 16000
    x = np.asarray(signal, dtype=np.float64)
    if len(x) < win:
        x = np.concatenate([x, np.zeros(win - len(x))])
    n_frames = 1 + (len(x) - win) // hop
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    inv_mel = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    lo, hi = mel(20.0), mel(8000.0)
    edges = [inv_mel(lo + (hi - lo) * k / (n_mels + 1)) for k in range(n_mels + 2)]
    weights = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for b in range(n_fft // 2 + 1):
            f = b * sr / n_fft
            if left < f <= centre:
                weights[m, b] = (f - left) / (centre - left)
            elif centre < f < right:
                weights[m, b] = (right - f) / (right - centre)
    n = np.arange(n_fft)
    out = np.zeros((n_frames, n_mels))
    for t in range(n_frames):
        frame = np.zeros(n_fft)
        for k in range(win):
            frame[k] = x[t * hop + k] * (0.5 - 0.5 * np.cos(2 * np.pi * k / win))
        power = np.zeros(n_fft // 2 + 1)
        for b in range(n_fft // 2 + 1):
            re = np.sum(frame * np.cos(2 * np.pi * b * n / n_fft))
            im = -np.sum(frame * np.sin(2 * np.pi * b * n / n_fft))
            power[b] = re * re + im * im
        for m in range(n_mels):
            out[t, m] = np.log(max(np.dot(weights[m], power), 1e-10))
    return out


def test_matches_loop_reference():
    signal = 0.1 * RNG.standard_normal(2400) + 0.3 * np.sin(2 * np.pi * 440 * np.arange(2400) / 16000)
    got = F.log_mel(signal)
    want = reference_log_mel(signal)
    assert got.dtype == np.float32 and got.shape == want.shape == (1 + (2400 - 400) // 160, 80)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_short_signal_is_one_zero_padded_frame():
    signal = 0.2 * RNG.standard_normal(250)
    got = F.log_mel(signal)
    assert got.shape == (1, 80)
    np.testing.assert_allclose(got, reference_log_mel(signal), atol=1e-4)


@pytest.mark.parametrize(
    "n, frames", [(0, 1), (1, 1), (399, 1), (400, 1), (559, 1), (560, 2), (16000, 98), (16001, 98), (16080, 99)]
)
def test_frame_count(n, frames):
    assert F.num_frames(n) == frames
    assert F.log_mel(np.zeros(n)).shape == (frames, 80)


def test_silence_gives_the_floor():
    assert np.all(F.log_mel(np.zeros(4000)) == np.float32(np.log(F.LOG_FLOOR)))


@pytest.mark.parametrize("hz", [250.0, 1000.0, 3000.0, 6500.0])
def test_pure_tone_peaks_in_its_mel_band(hz):
    t = np.arange(8000) / 16000
    feats = F.log_mel(0.5 * np.sin(2 * np.pi * hz * t))
    band = int(np.argmax(feats.mean(axis=0)))
    centres = F.mel_to_hz(np.linspace(F.hz_to_mel(F.F_MIN), F.hz_to_mel(F.F_MAX), 82))[1:-1]
    assert band == int(np.argmin(np.abs(centres - hz)))


def test_filterbank_shape_and_triangles():
    fb = F.mel_filterbank()
    assert fb.shape == (80, 257)
    assert fb.min() >= 0.0 and fb.max() <= 1.0
    assert np.all(fb.sum(axis=1) > 0), "every filter must see at least one FFT bin"
    peaks = np.argmax(fb, axis=1)
    assert np.all(np.diff(peaks) >= 0), "filter centres rise with the band index"


def test_htk_mel_scale():
    assert F.hz_to_mel(0.0) == 0.0
    assert abs(F.hz_to_mel(700.0) - 2595.0 * np.log10(2.0)) < 1e-9
    f = np.array([20.0, 440.0, 8000.0])
    np.testing.assert_allclose(F.mel_to_hz(F.hz_to_mel(f)), f)


def test_batch_equals_one_by_one():
    signals = [0.1 * RNG.standard_normal(n) for n in (300, 1600, 4321, 400)]
    batch = F.log_mel_batch(signals)
    assert len(batch) == 4
    for s, b in zip(signals, batch):
        np.testing.assert_array_equal(b, F.log_mel(s))
    assert F.log_mel_batch([]) == []


def test_normalizations():
    feats = [F.log_mel(0.1 * RNG.standard_normal(n)) for n in (3000, 5000)]
    u = F.utterance_normalize(feats[0])
    np.testing.assert_allclose(u.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(u.std(axis=0), 1.0, atol=1e-2)
    mean, std = F.global_stats(feats)
    stacked = np.concatenate(feats).astype(np.float64)
    np.testing.assert_allclose(mean, stacked.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, stacked.std(axis=0), rtol=1e-6)
    g = np.concatenate([F.apply_global_stats(f, mean, std) for f in feats])
    np.testing.assert_allclose(g.mean(axis=0), 0.0, atol=1e-3)


@pytest.mark.parametrize(
    "bad, error",
    [
        (np.zeros((2, 400)), ValueError),
        (np.zeros(400, dtype=np.int16), TypeError),
        (np.array([0.0, np.nan] * 300), ValueError),
    ],
)
def test_bad_signals(bad, error):
    with pytest.raises(error, match="signal"):
        F.log_mel(bad)


def test_bad_filterbank_arguments():
    with pytest.raises(ValueError, match="f_max"):
        F.mel_filterbank(f_max=9000.0)
    with pytest.raises(ValueError, match="n_mels"):
        F.mel_filterbank(n_mels=0)
