"""A connected-digits speech corpus synthesized offline with the ``espeak-ng`` program.

Each utterance speaks 1-7 random digits as words ("three oh seven"; "0" is spoken as "oh" or "zero"
and the transcript records which) with one *speaker*, an (English voice, voice variant) pair, at a
random speed, pitch, amplitude and word gap. The 22,050 Hz output of espeak-ng is resampled to
16 kHz, white or pink noise is added at a random SNR, and 80-dim log-mel features
(:mod:`npuq.speech.features`) are stored. Train, dev and test have disjoint speakers.

Everything about an utterance follows from ``(seed, split, index)`` alone, so a corpus is the same
whichever order, thread or machine synthesizes it (given the same espeak-ng release).

The cache lives in ``<cache_dir>/<config hash>/`` where ``cache_dir`` is the argument, else
``$NPUQ_DATA_DIR/digits``, else ``$XDG_CACHE_HOME/npuq/digits`` (``~/.cache/npuq/digits``). A build
writes into a hidden sibling directory and renames it into place when complete, so an interrupted
build never leaves a directory that looks finished; the manifest records the size and SHA-256 of every
file, and loading checks them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import warnings
import wave
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from npuq.speech import features as _features
from npuq.speech.vocab import DIGIT_WORDS

FORMAT_VERSION = 1
SPLITS = ("train", "dev", "test")
NOISE_KINDS = ("white", "pink")
SPLIT_BY = ("speaker", "variant")
ENV_DATA_DIR = "NPUQ_DATA_DIR"
INSTALL_HINT = "install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu)"

#: The eight English voices of espeak-ng 1.51 that use its own formant synthesizer (the other
#: English entries of ``espeak-ng --voices=en`` need mbrola voice packages).
DEFAULT_VOICES = (
    "en-gb",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)

#: Voice variants (files of ``espeak-ng-data/voices/!v/``) of espeak-ng 1.51, all but ``fast`` (a speed
#: experiment, not a voice) and ``Mr serious`` (its space does not survive the ``voice+variant`` syntax).
DEFAULT_VARIANTS = (
    "Alex",
    "Alicia",
    "Andrea",
    "Andy",
    "Annie",
    "AnxiousAndy",
    "Demonic",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
    "Henrique",
    "Hugo",
    "Jacky",
    "Lee",
    "Marco",
    "Mario",
    "Michael",
    "Mike",
    "Nguyen",
    "RicishayMax",
    "RicishayMax2",
    "RicishayMax3",
    "Storm",
    "Tweaky",
    "UniRobot",
    "adam",
    "anika",
    "anikaRobot",
    "announcer",
    "antonio",
    "aunty",
    "belinda",
    "benjamin",
    "boris",
    "caleb",
    "croak",
    "david",
    "ed",
    "edward",
    "edward2",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "grandma",
    "grandpa",
    "gustave",
    "iven",
    "iven2",
    "iven3",
    "iven4",
    "john",
    "kaukovalta",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "klatt5",
    "klatt6",
    "linda",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "marcelo",
    "max",
    "michel",
    "miguel",
    "norbert",
    "pablo",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "robosoft",
    "robosoft2",
    "robosoft3",
    "robosoft4",
    "robosoft5",
    "robosoft6",
    "robosoft7",
    "robosoft8",
    "sandro",
    "shelby",
    "steph",
    "steph2",
    "steph3",
    "travis",
    "victor",
    "whisper",
    "whisperf",
    "zac",
)

ESPEAK_SAMPLE_RATE = 22_050


class EspeakNotFoundError(FileNotFoundError):
    """The ``espeak-ng`` program is not installed (or not on PATH); the message says how to install it."""


class EspeakError(RuntimeError):
    """espeak-ng ran but failed, or wrote something that is not 16-bit mono WAV."""


class CorruptCacheError(RuntimeError):
    """A cached corpus is incomplete or does not match its manifest; the message names the file."""


class CorruptCacheWarning(RuntimeWarning):
    """A cached corpus was corrupt and is being rebuilt."""


# ----------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class DigitsConfig:
    """Everything that defines a corpus; its hash names the cache directory.

    Ranges are inclusive ``(low, high)`` pairs drawn uniformly per utterance: ``speed_wpm`` is espeak-ng's
    ``-s`` (words per minute), ``pitch`` its ``-p`` (0-99), ``amplitude`` its ``-a`` (0-200), ``word_gap``
    its ``-g`` (extra pause between words, in units of 10 ms), ``snr_db`` the signal-to-noise ratio of the
    added noise. ``p_oh`` is the probability that a "0" is spoken as "oh" rather than "zero".

    ``split_by="speaker"`` gives each split its own (voice, variant) pairs, so a test speaker's voice and
    variant each occur in training, only not together; ``split_by="variant"`` gives each split its own
    variants (with all voices), so test timbres are entirely unseen: a harder test.
    """

    seed: int = 0
    train_size: int = 4000
    dev_size: int = 300
    test_size: int = 500
    min_digits: int = 1
    max_digits: int = 7
    p_oh: float = 0.5
    voices: tuple = DEFAULT_VOICES
    variants: tuple = DEFAULT_VARIANTS
    speed_wpm: tuple = (130, 210)
    pitch: tuple = (20, 80)
    amplitude: tuple = (60, 140)
    word_gap: tuple = (0, 3)
    snr_db: tuple = (10.0, 30.0)
    noise_kinds: tuple = NOISE_KINDS
    split_by: str = "speaker"

    def __post_init__(self):
        # tuples, whatever sequence was passed, so that configs compare and hash by value
        for name in ("voices", "variants", "speed_wpm", "pitch", "amplitude", "word_gap", "snr_db", "noise_kinds"):
            value = getattr(self, name)
            if isinstance(value, str) or not hasattr(value, "__iter__"):
                raise TypeError(f"DigitsConfig.{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("seed", "train_size", "dev_size", "test_size", "min_digits", "max_digits"):
            value = getattr(self, name)
            # numpy integers would not survive json.dumps in the manifest
            if isinstance(value, np.integer):
                object.__setattr__(self, name, int(value))
        self.validate()

    def size(self, split: str) -> int:
        return getattr(self, f"{check_split(split)}_size")

    def validate(self) -> None:
        for name in ("train_size", "dev_size", "test_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"DigitsConfig.{name} must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"DigitsConfig.seed must be a non-negative integer, got {self.seed!r}")
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"need 1 <= min_digits <= max_digits, got min_digits={self.min_digits}, max_digits={self.max_digits}"
            )
        if not 0.0 <= self.p_oh <= 1.0:
            raise ValueError(f"DigitsConfig.p_oh must be a probability in [0, 1], got {self.p_oh}")
        limits = {"speed_wpm": (80, 450), "pitch": (0, 99), "amplitude": (0, 200), "word_gap": (0, 100)}
        for name, (lo_ok, hi_ok) in limits.items():
            lo, hi = _pair(self, name)
            if int(lo) != lo or int(hi) != hi or not lo_ok <= lo <= hi <= hi_ok:
                raise ValueError(
                    f"DigitsConfig.{name} must be integers ({name}_low, {name}_high) with "
                    f"{lo_ok} <= low <= high <= {hi_ok}, got {getattr(self, name)}"
                )
        lo, hi = _pair(self, "snr_db")
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise ValueError(
                f"DigitsConfig.snr_db must be finite (low, high) decibels with low <= high, got {self.snr_db}"
            )
        if not self.noise_kinds or any(k not in NOISE_KINDS for k in self.noise_kinds):
            raise ValueError(
                f"DigitsConfig.noise_kinds must be a non-empty subset of {NOISE_KINDS}, got {self.noise_kinds}"
            )
        for name in ("voices", "variants"):
            names = getattr(self, name)
            if not names or any(not isinstance(v, str) or not v or "+" in v or " " in v for v in names):
                raise ValueError(
                    f"DigitsConfig.{name} must be a non-empty list of names without '+' or spaces, got {names}"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"DigitsConfig.{name} has duplicates: {names}")
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"DigitsConfig.split_by must be one of {SPLIT_BY}, got {self.split_by!r}")
        if self.split_by == "variant" and len(self.variants) < len(SPLITS):
            raise ValueError(f"split_by='variant' needs at least {len(SPLITS)} variants, got {len(self.variants)}")
        if len(self.voices) * len(self.variants) < len(SPLITS):
            raise ValueError(
                f"{len(self.voices)} voices x {len(self.variants)} variants give fewer speakers "
                f"than the {len(SPLITS)} splits, which must not share speakers"
            )

    def to_dict(self) -> dict:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DigitsConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown DigitsConfig fields: {sorted(unknown)}")
        return cls(**d)

    def digest(self) -> str:
        """Hex digest of the config, the feature definition and the cache format (names the cache)."""
        payload = {"format": FORMAT_VERSION, "config": self.to_dict(), "features": feature_definition()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _pair(config, name):
    value = getattr(config, name)
    if len(value) != 2:
        raise ValueError(f"DigitsConfig.{name} must be a (low, high) pair, got {value}")
    try:
        return float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"DigitsConfig.{name} must hold numbers, got {value}") from None


def check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


def feature_definition() -> dict:
    f = _features
    return {
        "sample_rate": f.SAMPLE_RATE,
        "window_length": f.WINDOW_LENGTH,
        "hop_length": f.HOP_LENGTH,
        "n_fft": f.N_FFT,
        "n_mels": f.N_MELS,
        "f_min": f.F_MIN,
        "f_max": f.F_MAX,
        "mel_scale": "htk",
        "window": "periodic hann",
        "log_floor": f.LOG_FLOOR,
        "resampler": "scipy.signal.resample_poly",
    }


# ----------------------------------------------------------------------------------------------------
# espeak-ng


def find_espeak() -> str:
    """Path of the espeak-ng program, or :class:`EspeakNotFoundError` saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise EspeakNotFoundError(
            f"the speech corpus is synthesized with the espeak-ng program, which is not on PATH: {INSTALL_HINT}"
        )
    return path


def run_espeak(arguments) -> bytes:
    """Run espeak-ng with ``arguments`` and return its standard output."""
    command = [find_espeak(), *arguments]
    result = subprocess.run(command, capture_output=True, timeout=120)
    if result.returncode != 0:
        raise EspeakError(
            f"espeak-ng failed (exit status {result.returncode}) for {command[1:]}: "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout


def espeak_version() -> str:
    return run_espeak(["--version"]).decode(errors="replace").strip()


def espeak_data_dir() -> Path:
    """espeak-ng's data directory, as its ``--version`` reports it."""
    text = espeak_version()
    marker = "Data at:"
    if marker not in text:
        raise EspeakError(f"cannot find the data directory in `espeak-ng --version` output: {text!r}")
    return Path(text.split(marker, 1)[1].strip())


def available_voices() -> list[str]:
    """English voices of the installed espeak-ng that need no mbrola package, by language name."""
    listing = run_espeak(["--voices=en"]).decode(errors="replace").splitlines()
    voices = []
    for line in listing[1:]:
        parts = line.split()
        # columns: priority, language, age/gender, voice name, file, other languages
        if len(parts) >= 5 and parts[1].startswith("en") and not parts[4].startswith("mb/"):
            if parts[1] not in voices:
                voices.append(parts[1])
    return voices


def available_variants() -> list[str]:
    """Names of the voice variant files of the installed espeak-ng (``<data>/voices/!v/*``)."""
    directory = espeak_data_dir() / "voices" / "!v"
    if not directory.is_dir():
        raise EspeakError(f"espeak-ng's variant directory {directory} does not exist")
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def check_speakers(config: DigitsConfig) -> None:
    """Raise if a configured voice or variant is not installed (espeak-ng would silently ignore an
    unknown variant and speak with the plain voice, merging what should be distinct speakers)."""
    voices, variants = set(available_voices()), set(available_variants())
    missing_voices = [v for v in config.voices if v not in voices]
    missing_variants = [v for v in config.variants if v not in variants]
    if missing_voices:
        raise ValueError(f"espeak-ng has no (non-mbrola) English voice {missing_voices}; available: {sorted(voices)}")
    if missing_variants:
        raise ValueError(
            f"espeak-ng has no voice variant {missing_variants} (it would ignore them silently); "
            f"available: {sorted(variants)}"
        )


def parse_wav(data: bytes, source: str = "espeak-ng output") -> tuple[np.ndarray, int]:
    """Samples (float64 in [-1, 1]) and sample rate of 16-bit mono WAV bytes.

    Streamed WAV (``--stdout``) declares a huge placeholder length; the samples actually present are read.
    """
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise EspeakError(f"{source}: not a readable WAV stream ({exc}); got {len(data)} bytes") from exc
    if channels != 1 or width != 2:
        raise EspeakError(f"{source}: expected 16-bit mono WAV, got {channels} channels of {8 * width} bits")
    samples = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2").astype(np.float64) / 32768.0
    return samples, rate


def synthesize(
    text: str,
    voice: str,
    variant: str | None = None,
    speed_wpm: int = 175,
    pitch: int = 50,
    amplitude: int = 100,
    word_gap: int = 0,
) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng; returns (samples in [-1, 1], sample rate)."""
    name = voice if not variant else f"{voice}+{variant}"
    arguments = [
        "-v",
        name,
        "-s",
        str(int(speed_wpm)),
        "-p",
        str(int(pitch)),
        "-a",
        str(int(amplitude)),
        "-g",
        str(int(word_gap)),
        "--stdout",
        text,
    ]
    samples, rate = parse_wav(run_espeak(arguments), f"espeak-ng -v {name} {text!r}")
    if len(samples) == 0:
        raise EspeakError(f"espeak-ng -v {name} produced no audio for {text!r}")
    return samples, rate


# ----------------------------------------------------------------------------------------------------
# signal processing


@functools.lru_cache(maxsize=4)
def _antialias_filter(up: int, down: int) -> np.ndarray:
    # the low-pass that resample_poly designs by default (Kaiser window, beta 5, cutoff at the lower
    # Nyquist rate, 10 * max(up, down) taps each side); designed once here because for 320/441 its
    # 8,821 taps cost more to design than the filtering itself
    from scipy.signal import firwin

    max_rate = max(up, down)
    taps = firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps.setflags(write=False)
    return taps


def resample_to_16k(samples, rate: int = ESPEAK_SAMPLE_RATE) -> np.ndarray:
    """Resample to 16 kHz with scipy's polyphase filter (a Kaiser-windowed low-pass removes what lies
    above 8 kHz before decimation, so nothing aliases)."""
    from scipy.signal import resample_poly

    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    x = np.asarray(samples, dtype=np.float64)
    if rate == _features.SAMPLE_RATE:
        return x.copy()
    g = gcd(_features.SAMPLE_RATE, int(rate))
    up, down = _features.SAMPLE_RATE // g, int(rate) // g
    return resample_poly(x, up, down, window=np.array(_antialias_filter(up, down)))


def make_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white noise, or pink noise (power falling as 1/f) shaped in the frequency domain."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
    white = rng.standard_normal(n)
    if kind == "white" or n < 2:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.arange(len(spectrum), dtype=np.float64)
    scale = np.zeros_like(freqs)
    scale[1:] = 1.0 / np.sqrt(freqs[1:])
    pink = np.fft.irfft(spectrum * scale, n=n)
    return pink / pink.std()


def add_noise(samples, snr_db: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``samples`` plus noise scaled so that ``10 log10(mean(samples**2) / mean(noise**2)) == snr_db``.

    The signal power is averaged over the whole utterance, its leading and trailing silence included.
    """
    x = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    signal_power = float(np.mean(x**2)) if len(x) else 0.0
    if signal_power == 0.0:
        raise ValueError("cannot add noise at a given SNR to a silent signal")
    noise = make_noise(len(x), kind, rng)
    noise *= np.sqrt(signal_power / (10.0 ** (snr_db / 10.0) * np.mean(noise**2)))
    return x + noise


# ----------------------------------------------------------------------------------------------------
# the corpus plan: speakers and per-utterance parameters


def speaker_name(voice: str, variant: str) -> str:
    return f"{voice}+{variant}"


def split_speakers(config: DigitsConfig) -> dict[str, list[str]]:
    """Disjoint speaker lists per split, in proportion to the split sizes (at least one each).

    The units shuffled and dealt out are the speakers, or with ``split_by="variant"`` the variants
    (each taking all its speakers along).
    """
    if config.split_by == "variant":
        groups = [[speaker_name(v, var) for v in config.voices] for var in config.variants]
    else:
        groups = [[speaker_name(v, var)] for v in config.voices for var in config.variants]
    order = np.random.default_rng([config.seed, 0xD161]).permutation(len(groups))
    total = sum(config.size(s) for s in SPLITS)
    counts = {s: max(1, round(len(groups) * config.size(s) / total)) for s in ("dev", "test")}
    counts["train"] = len(groups) - counts["dev"] - counts["test"]
    if counts["train"] < 1:
        raise ValueError(f"{len(groups)} {config.split_by}s are too few to give train, dev and test their own")
    result, start = {}, 0
    for s in ("train", "dev", "test"):
        result[s] = sorted(name for i in order[start : start + counts[s]] for name in groups[i])
        start += counts[s]
    return result


@dataclass(frozen=True)
class UtterancePlan:
    """What one utterance speaks and how; all drawn from ``(seed, split, index)``."""

    utterance_id: str
    speaker: str
    voice: str
    variant: str
    words: tuple
    speed_wpm: int
    pitch: int
    amplitude: int
    word_gap: int
    noise: str
    snr_db: float
    noise_seed: int

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["words"] = list(self.words)
        return d


def words_of_digits(digits, zero_as_oh) -> list[str]:
    """Words spoken for a digit string; ``zero_as_oh[k]`` says how the k-th digit is spoken if it is 0."""
    return ["oh" if d == 0 and oh else DIGIT_WORDS[d] for d, oh in zip(digits, zero_as_oh)]


def plan_utterance(config: DigitsConfig, split: str, index: int, speakers: list[str]) -> UtterancePlan:
    rng = np.random.default_rng([config.seed, SPLITS.index(split) + 1, index])
    speaker = speakers[int(rng.integers(len(speakers)))]
    voice, variant = speaker.split("+", 1)
    n_digits = int(rng.integers(config.min_digits, config.max_digits + 1))
    digits = rng.integers(0, 10, size=n_digits).tolist()
    zero_as_oh = (rng.random(n_digits) < config.p_oh).tolist()

    def uniform_int(pair):
        return int(rng.integers(int(pair[0]), int(pair[1]) + 1))

    return UtterancePlan(
        utterance_id=f"{split}-{index:06d}",
        speaker=speaker,
        voice=voice,
        variant=variant,
        words=tuple(words_of_digits(digits, zero_as_oh)),
        speed_wpm=uniform_int(config.speed_wpm),
        pitch=uniform_int(config.pitch),
        amplitude=uniform_int(config.amplitude),
        word_gap=uniform_int(config.word_gap),
        noise=config.noise_kinds[int(rng.integers(len(config.noise_kinds)))],
        snr_db=round(float(rng.uniform(config.snr_db[0], config.snr_db[1])), 3),
        noise_seed=int(rng.integers(2**63)),
    )


def plan_corpus(config: DigitsConfig) -> dict[str, list[UtterancePlan]]:
    speakers = split_speakers(config)
    return {s: [plan_utterance(config, s, i, speakers[s]) for i in range(config.size(s))] for s in SPLITS}


def render_utterance(plan: UtterancePlan) -> np.ndarray:
    """The noisy 16 kHz audio of a planned utterance."""
    samples, rate = synthesize(
        plan.text, plan.voice, plan.variant, plan.speed_wpm, plan.pitch, plan.amplitude, plan.word_gap
    )
    audio = resample_to_16k(samples, rate)
    return add_noise(audio, plan.snr_db, plan.noise, np.random.default_rng(plan.noise_seed))


def _featurize(plan: UtterancePlan) -> tuple[np.ndarray, int]:
    try:
        audio = render_utterance(plan)
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python >= 3.11: say which utterance failed, keep the error type
            exc.add_note(f"while synthesizing {plan.utterance_id}: {plan.speaker} saying {plan.text!r}")
        raise
    return _features.log_mel(audio), len(audio)


# ----------------------------------------------------------------------------------------------------
# the on-disk cache


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env) / "digits"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "npuq" / "digits"


def corpus_dir(config: DigitsConfig | None = None, cache_dir=None) -> Path:
    """Where the corpus of ``config`` is (or would be) cached."""
    config = config or DigitsConfig()
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / config.digest()


MANIFEST = "manifest.json"


def _feature_file(split: str) -> str:
    return f"{split}.features.npy"


def _utterance_file(split: str) -> str:
    return f"{split}.utterances.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory, config: DigitsConfig | None = None, splits=SPLITS, verify: bool = True) -> dict:
    """The manifest of a cached corpus, after checking it against the files it lists.

    ``verify`` also compares SHA-256 digests (reads every listed file of ``splits``); sizes are always
    compared. Raises :class:`CorruptCacheError` naming the first problem found.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CorruptCacheError(f"{path} is missing: {directory} is not a complete corpus")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCacheError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise CorruptCacheError(f"{path}: the manifest is not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptCacheError(f"{path}: format version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    if config is not None and manifest.get("config") != config.to_dict():
        raise CorruptCacheError(f"{path}: the manifest's config differs from the one asked for")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CorruptCacheError(f"{path}: no file list")
    for split in splits:
        for name in (_feature_file(split), _utterance_file(split)):
            entry = files.get(name)
            file_path = directory / name
            if entry is None:
                raise CorruptCacheError(f"{path}: {name} is not listed")
            if not file_path.is_file():
                raise CorruptCacheError(f"{file_path} is missing")
            size = file_path.stat().st_size
            if size != entry.get("bytes"):
                raise CorruptCacheError(f"{file_path}: {size} bytes, the manifest says {entry.get('bytes')}")
            if verify and _sha256(file_path) != entry.get("sha256"):
                raise CorruptCacheError(f"{file_path}: SHA-256 differs from the manifest (the file is corrupt)")
    return manifest


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def _synthesize_split(plans, workers: int, progress, label: str):
    results = [None] * len(plans)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plans), desc=f"synthesizing {label}", unit="utt")
        except ImportError:  # tqdm is optional: build silently without it
            bar = None
    # threads suffice: the time goes into espeak-ng subprocesses and numpy/scipy code that releases the GIL
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = {pool.submit(_featurize, p): k for k, p in enumerate(plans)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if bar is not None:
                bar.update(1)
    finally:
        # on an error or Ctrl-C, drop the queued utterances instead of synthesizing them all first
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    return results


def _write_corpus(directory: Path, config: DigitsConfig, workers: int, progress) -> dict:
    started = time.perf_counter()
    speakers = split_speakers(config)
    plans = plan_corpus(config)
    files, counts, stats = {}, {}, {}
    train_features = None
    for split in SPLITS:
        results = _synthesize_split(plans[split], workers, progress, split)
        feats = [f for f, _ in results]
        utterances = []
        for plan, (f, n_samples) in zip(plans[split], results):
            d = plan.to_dict()
            d.update(n_samples=n_samples, n_frames=len(f), seconds=n_samples / _features.SAMPLE_RATE)
            utterances.append(d)
        np.save(directory / _feature_file(split), np.concatenate(feats).astype(np.float32))
        _write_json(directory / _utterance_file(split), utterances)
        seconds = np.array([u["seconds"] for u in utterances])
        counts[split] = {
            "utterances": len(utterances),
            "speakers": len(speakers[split]),
            "speakers_used": len({u["speaker"] for u in utterances}),
            "words": int(sum(len(u["words"]) for u in utterances)),
            "frames": int(sum(u["n_frames"] for u in utterances)),
            "seconds": float(seconds.sum()),
        }
        stats[split] = {
            "seconds_mean": float(seconds.mean()),
            "seconds_min": float(seconds.min()),
            "seconds_max": float(seconds.max()),
        }
        if split == "train":
            train_features = feats
    mean, std = _features.global_stats(train_features)
    for name in sorted(p.name for p in directory.iterdir()):
        files[name] = {"bytes": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "config_hash": config.digest(),
        "espeak_ng": espeak_version(),
        "voices": list(config.voices),
        "variants": list(config.variants),
        "speakers": speakers,
        "counts": counts,
        "durations": stats,
        "features": feature_definition(),
        "train_mean": mean.tolist(),
        "train_std": std.tolist(),
        "build_seconds": time.perf_counter() - started,
        "workers": workers,
        "files": files,
    }
    # the manifest goes last: its presence (with matching sizes and digests) marks a finished corpus
    _write_json(directory / MANIFEST, manifest)
    return manifest


def build_digits(
    config: DigitsConfig | None = None,
    cache_dir=None,
    workers: int | None = None,
    progress: bool = True,
    rebuild: bool = False,
    on_corrupt: str = "rebuild",
    verify: bool = True,
) -> Path:
    """Synthesize the corpus of ``config`` into the cache unless it is there already; returns its directory.

    ``on_corrupt``: ``"rebuild"`` (warn with :class:`CorruptCacheWarning`, then rebuild) or ``"raise"``
    (:class:`CorruptCacheError`) when the cached copy fails its checks. ``rebuild=True`` always rebuilds.
    """
    config = config or DigitsConfig()
    if on_corrupt not in ("rebuild", "raise"):
        raise ValueError(f"on_corrupt must be 'rebuild' or 'raise', got {on_corrupt!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers}")
    target = corpus_dir(config, cache_dir)
    if target.exists() and not rebuild:
        try:
            read_manifest(target, config, verify=verify)
            return target
        except CorruptCacheError as exc:
            if on_corrupt == "raise":
                raise CorruptCacheError(f"{exc}. Delete {target} (or pass on_corrupt='rebuild') to rebuild it") from exc
            warnings.warn(
                f"rebuilding the corrupt speech corpus cache {target}: {exc}", CorruptCacheWarning, stacklevel=2
            )
    find_espeak()
    check_speakers(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{target.name}-", dir=target.parent))
    try:
        _write_corpus(partial, config, workers or max(1, os.cpu_count() or 1), progress)
        if target.exists():
            # set the old copy aside first: a directory cannot be renamed over a non-empty one
            stale = target.parent / f".stale-{target.name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(partial, target)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return target
