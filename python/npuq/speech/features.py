"""80-dimensional log-mel features of 16 kHz audio.

The definition (``docs/speech.md`` repeats it):

* input: mono float audio at 16,000 Hz, full scale +-1 (int16 samples divided by 32768);
* frames of 400 samples (25 ms) every 160 samples (10 ms), no centering and no padding: a signal of
  ``n >= 400`` samples gives ``1 + (n - 400) // 160`` frames; a shorter one is zero-padded to a single frame;
* each frame is multiplied by a periodic Hann window ``w[k] = 0.5 - 0.5 cos(2 pi k / 400)``, zero-padded
  to 512 points, and its power spectrum ``|rfft|^2`` (257 bins) taken; no pre-emphasis, no dither;
* 80 triangular filters, equally spaced on the HTK mel scale ``mel(f) = 2595 log10(1 + f / 700)``
  between 20 Hz and 8,000 Hz, each with peak weight 1 (no area normalization);
* ``log(max(energy, 1e-10))``, natural logarithm.

numpy only (no torch): the whole corpus goes through here once, on the CPU, and the batched form
runs one FFT over the frames of many utterances.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_LENGTH = 400
HOP_LENGTH = 160
N_FFT = 512
N_MELS = 80
F_MIN = 20.0
F_MAX = 8_000.0
LOG_FLOOR = 1e-10

NORMALIZATIONS = (None, "utterance", "global")


def hz_to_mel(hz):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = F_MIN,
    f_max: float = F_MAX,
) -> np.ndarray:
    """Triangular HTK-mel filters as a ``(n_mels, n_fft // 2 + 1)`` float64 matrix.

    Filter ``m`` rises linearly (in Hz) from edge ``m`` to a peak of 1 at edge ``m + 1`` and falls to 0
    at edge ``m + 2``, where the ``n_mels + 2`` edges are equally spaced in mel from ``f_min`` to ``f_max``.
    """
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}"
        )
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bin_hz = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


_FILTERBANK = mel_filterbank()
_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW_LENGTH) / WINDOW_LENGTH)


def num_frames(n_samples: int) -> int:
    """Frames that :func:`log_mel` returns for a signal of ``n_samples`` samples."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    return 1 if n_samples <= WINDOW_LENGTH else 1 + (n_samples - WINDOW_LENGTH) // HOP_LENGTH


def _as_signal(signal, name: str) -> np.ndarray:
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of samples, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must hold float samples in [-1, 1] (divide int16 audio by 32768), got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or infinite samples")
    return x.astype(np.float64, copy=False)


def _frames(x: np.ndarray) -> np.ndarray:
    if len(x) < WINDOW_LENGTH:
        x = np.pad(x, (0, WINDOW_LENGTH - len(x)))
    return np.lib.stride_tricks.sliding_window_view(x, WINDOW_LENGTH)[::HOP_LENGTH]


def _log_mel_of_frames(frames: np.ndarray) -> np.ndarray:
    spectrum = np.fft.rfft(frames * _WINDOW, n=N_FFT, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    return np.log(np.maximum(power @ _FILTERBANK.T, LOG_FLOOR)).astype(np.float32)


def log_mel(signal) -> np.ndarray:
    """Log-mel features ``(num_frames(len(signal)), 80)`` float32 of one 16 kHz signal."""
    return _log_mel_of_frames(_frames(_as_signal(signal, "signal")))


def log_mel_batch(signals) -> list[np.ndarray]:
    """:func:`log_mel` of each signal in a sequence, with one FFT over all their frames."""
    framed = [_frames(_as_signal(s, f"signals[{i}]")) for i, s in enumerate(signals)]
    if not framed:
        return []
    features = _log_mel_of_frames(np.concatenate(framed))
    bounds = np.cumsum([len(f) for f in framed])[:-1]
    return list(np.split(features, bounds))


def utterance_normalize(features: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Each feature dimension shifted to mean 0 and scaled to variance 1 over the utterance's frames."""
    f = np.asarray(features, dtype=np.float32)
    return ((f - f.mean(axis=0)) / np.sqrt(f.var(axis=0) + eps)).astype(np.float32)


def global_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation over all frames of a list of feature arrays."""
    if len(features) == 0:
        raise ValueError("global_stats needs at least one feature array")
    total = np.zeros(N_MELS, dtype=np.float64)
    total_sq = np.zeros(N_MELS, dtype=np.float64)
    count = 0
    # in float64 and one utterance at a time: a few million frames of float32 squares lose digits
    for f in features:
        f64 = np.asarray(f, dtype=np.float64)
        total += f64.sum(axis=0)
        total_sq += (f64**2).sum(axis=0)
        count += len(f64)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean, std


def apply_global_stats(features: np.ndarray, mean, std, eps: float = 1e-5) -> np.ndarray:
    """``(features - mean) / (std + eps)`` as float32."""
    return (
        (np.asarray(features, dtype=np.float32) - np.asarray(mean, dtype=np.float32))
        / (np.asarray(std, dtype=np.float32) + eps)
    ).astype(np.float32)
