"""One split of the cached digits corpus in memory, and padding of batches for a model."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npuq.speech import corpus as _corpus
from npuq.speech import features as _features
from npuq.speech.vocab import VOCAB, Vocabulary


@dataclass
class DigitsSplit:
    """Features, targets and metadata of one split; ``split[i]`` is ``(features_i, token_ids_i)``.

    ``features[i]`` is float32 ``(T_i, 80)``; ``token_ids[i]`` the int64 word ids of ``transcripts[i]``
    (without ``<sos>``/``<eos>``; :func:`collate` adds them on request).
    """

    name: str
    features: list
    token_ids: list
    transcripts: list
    speakers: list
    utterances: list = field(repr=False)
    manifest: dict = field(repr=False)
    directory: Path = None
    vocab: Vocabulary = VOCAB

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index):
        return self.features[index], self.token_ids[index]

    def collate(self, indices, add_sos: bool = False, add_eos: bool = False, as_torch: bool = True):
        """The padded batch of the utterances at ``indices`` (see :func:`collate`)."""
        return collate([self[i] for i in indices], self.vocab, add_sos=add_sos, add_eos=add_eos, as_torch=as_torch)


def load_digits(
    split: str,
    config=None,
    cache_dir=None,
    normalize: str | None = None,
    build: bool = True,
    workers: int | None = None,
    progress: bool = True,
    verify: bool = True,
    on_corrupt: str = "rebuild",
) -> DigitsSplit:
    """Load one split (``"train"``, ``"dev"`` or ``"test"``) of the corpus of ``config``.

    The corpus is synthesized and cached first if needed (``build=False`` raises FileNotFoundError instead).
    ``normalize``: ``None`` (raw log-mel), ``"utterance"`` (per-utterance mean and variance) or ``"global"``
    (the training set's per-dimension mean and standard deviation, stored in the manifest).
    """
    _corpus.check_split(split)
    if normalize not in _features.NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {_features.NORMALIZATIONS}, got {normalize!r}")
    config = config or _corpus.DigitsConfig()
    if not isinstance(config, _corpus.DigitsConfig):
        raise TypeError(f"config must be a DigitsConfig, got {type(config).__name__}")
    directory = _corpus.corpus_dir(config, cache_dir)
    if build:
        directory = _corpus.build_digits(
            config, cache_dir, workers=workers, progress=progress, on_corrupt=on_corrupt, verify=verify
        )
    elif not (directory / _corpus.MANIFEST).is_file():
        raise FileNotFoundError(
            f"no cached digits corpus at {directory}: build it with "
            f"`python3 scripts/make_digits.py` or npuq.speech.build_digits(config)"
        )
    manifest = _corpus.read_manifest(directory, config, splits=(split,), verify=verify and not build)
    return _read_split(directory, split, manifest, normalize)


def _read_split(directory: Path, split: str, manifest: dict, normalize) -> DigitsSplit:
    feature_path = directory / _corpus._feature_file(split)
    utterance_path = directory / _corpus._utterance_file(split)
    try:
        utterances = json.loads(utterance_path.read_text())
        stacked = np.load(feature_path)
    except (OSError, ValueError) as exc:
        raise _corpus.CorruptCacheError(f"cannot read {split} of {directory}: {exc}") from exc
    lengths = [int(u["n_frames"]) for u in utterances]
    if stacked.ndim != 2 or stacked.shape[1] != _features.N_MELS or stacked.shape[0] != sum(lengths):
        raise _corpus.CorruptCacheError(
            f"{feature_path}: shape {stacked.shape}, expected ({sum(lengths)}, "
            f"{_features.N_MELS}) from {utterance_path}"
        )
    features = np.split(stacked, np.cumsum(lengths)[:-1]) if lengths else []
    if normalize == "utterance":
        features = [_features.utterance_normalize(f) for f in features]
    elif normalize == "global":
        mean, std = np.asarray(manifest["train_mean"]), np.asarray(manifest["train_std"])
        features = [_features.apply_global_stats(f, mean, std) for f in features]
    transcripts = [list(u["words"]) for u in utterances]
    return DigitsSplit(
        name=split,
        features=list(features),
        token_ids=[VOCAB.encode(t) for t in transcripts],
        transcripts=transcripts,
        speakers=[u["speaker"] for u in utterances],
        utterances=utterances,
        manifest=manifest,
        directory=directory,
    )


def pad_sequences(sequences, pad_value=0, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Stack arrays of shapes ``(L_i, ...)`` into ``(B, max L_i, ...)`` padded with ``pad_value``; also the lengths."""
    arrays = [np.asarray(s) for s in sequences]
    if not arrays:
        raise ValueError("cannot pad an empty batch")
    tail = arrays[0].shape[1:]
    if any(a.shape[1:] != tail for a in arrays):
        raise ValueError(f"sequences differ beyond their first axis: {[a.shape for a in arrays]}")
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    out = np.full((len(arrays), int(lengths.max()), *tail), pad_value, dtype=dtype or arrays[0].dtype)
    for k, a in enumerate(arrays):
        out[k, : len(a)] = a
    return out, lengths


def collate(
    batch, vocab: Vocabulary = VOCAB, add_sos: bool = False, add_eos: bool = False, as_torch: bool = True
) -> dict:
    """Pad a list of ``(features, token_ids)`` pairs into one batch.

    Returns ``features`` (B, T_max, 80) float32 zero-padded, ``feature_lengths`` (B,), ``targets``
    (B, L_max) int64 padded with ``<pad>``, ``target_lengths`` (B,) (counting any ``<sos>``/``<eos>``
    added), as torch tensors or, with ``as_torch=False``, numpy arrays. Usable as a DataLoader
    ``collate_fn`` (wrap it in functools.partial to change the options).
    """
    batch = list(batch)
    if not batch:
        raise ValueError("cannot collate an empty batch")
    feats, targets = [], []
    for k, item in enumerate(batch):
        if len(item) != 2:
            raise ValueError(f"batch[{k}] must be a (features, token_ids) pair")
        f, t = item
        f = np.asarray(f, dtype=np.float32)
        if f.ndim != 2:
            raise ValueError(f"batch[{k}] features must be (frames, dims), got shape {f.shape}")
        t = np.asarray(t, dtype=np.int64).reshape(-1)
        pieces = ([[vocab.sos_id]] if add_sos else []) + [t] + ([[vocab.eos_id]] if add_eos else [])
        feats.append(f)
        targets.append(np.concatenate(pieces).astype(np.int64))
    x, x_lengths = pad_sequences(feats, 0.0, np.float32)
    y, y_lengths = pad_sequences(targets, vocab.pad_id, np.int64)
    out = {"features": x, "feature_lengths": x_lengths, "targets": y, "target_lengths": y_lengths}
    if as_torch:
        import torch

        out = {k: torch.from_numpy(v) for k, v in out.items()}
    return out
