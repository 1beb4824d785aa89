"""The word vocabulary of the connected-digits task."""

from __future__ import annotations

import numpy as np

#: Spoken words of the digits 0-9; "0" is spoken as either "zero" or "oh", so both are words.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = DIGIT_WORDS + ("oh",)

PAD, SOS, EOS = "<pad>", "<sos>", "<eos>"


class Vocabulary:
    """Token ids: ``<pad>`` = 0, ``<sos>`` = 1, ``<eos>`` = 2, then the 11 words in :data:`WORDS` order."""

    def __init__(self, words=WORDS):
        words = tuple(words)
        if len(set(words)) != len(words):
            raise ValueError(f"vocabulary words must be unique, got {words}")
        if {PAD, SOS, EOS} & set(words):
            raise ValueError(f"{PAD}, {SOS} and {EOS} are reserved and cannot be words")
        self.tokens = (PAD, SOS, EOS) + words
        self.words = words
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    pad_id, sos_id, eos_id = 0, 1, 2

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({list(self.words)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and other.tokens == self.tokens

    def __hash__(self) -> int:
        return hash(self.tokens)

    def id(self, token: str) -> int:
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the vocabulary {list(self.tokens)}") from None

    def encode(self, words, add_sos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Token ids (int64) of a list of words (or a whitespace-separated string)."""
        if isinstance(words, str):
            words = words.split()
        ids = [self.id(w) for w in words]
        if any(i < len(self.tokens) - len(self.words) for i in ids):
            raise ValueError(f"encode takes words only, not the special tokens: got {list(words)}")
        return np.array(([self.sos_id] if add_sos else []) + ids + ([self.eos_id] if add_eos else []), dtype=np.int64)

    def decode(self, ids) -> list[str]:
        """Words of a sequence of ids: ``<pad>`` and ``<sos>`` are dropped, and ``<eos>`` ends it."""
        words = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} is out of range 0..{len(self.tokens) - 1}")
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.sos_id):
                continue
            words.append(self.tokens[i])
        return words


VOCAB = Vocabulary()
