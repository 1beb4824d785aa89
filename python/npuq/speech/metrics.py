"""Word and character error rates from a Levenshtein alignment.

An alignment of a reference with a hypothesis pairs tokens as correct (C), substituted (S), deleted
from the reference (D) or inserted into the hypothesis (I); the edit distance is the least ``S + D + I``
over all alignments, and ``C + S + D = len(reference)``, ``C + S + I = len(hypothesis)``.

* WER of a corpus = ``sum(S + D + I) / sum(len(reference words))`` over its utterances (not the mean of
  per-utterance rates, which would weight short utterances up); insertions can take it above 1.
* CER: the same over characters, each transcript written as its words joined by single spaces (the
  spaces count as characters).

When the references hold no token at all the rate is 0 if there is no error and infinite otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditCounts:
    """The counts of one minimal alignment (or the sum over a corpus)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def correct(self) -> int:
        return self.reference_length - self.substitutions - self.deletions

    @property
    def rate(self) -> float:
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length

    def __add__(self, other: "EditCounts") -> "EditCounts":
        return EditCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_length + other.reference_length,
        )


def _as_words(transcript, name: str) -> list:
    if isinstance(transcript, str):
        return transcript.split()
    try:
        return list(transcript)
    except TypeError:
        raise TypeError(f"{name} must be a string or a sequence of tokens, got {type(transcript).__name__}") from None


def align(reference, hypothesis) -> EditCounts:
    """Counts of a minimal alignment of two token sequences (any hashable tokens).

    Among alignments of equal cost the backtrace prefers substitutions, then deletions, so the split
    into S, D and I is deterministic; the total does not depend on that choice.
    """
    ref, hyp = list(reference), list(hypothesis)
    n, m = len(ref), len(hyp)
    # cost[i][j]: distance between ref[:i] and hyp[:j]
    cost = [list(range(m + 1))]
    for i in range(1, n + 1):
        row = [i] + [0] * m
        prev = cost[i - 1]
        r = ref[i - 1]
        for j in range(1, m + 1):
            row[j] = min(prev[j - 1] + (r != hyp[j - 1]), prev[j] + 1, row[j - 1] + 1)
        cost.append(row)
    s = d = ins = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            s += ref[i - 1] != hyp[j - 1]
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            d += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return EditCounts(s, d, ins, n)


def edit_distance(reference, hypothesis) -> int:
    """Levenshtein distance (unit costs) between two token sequences."""
    return align(reference, hypothesis).errors


def _corpus_counts(references, hypotheses, tokenize) -> EditCounts:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("pass lists of transcripts (or use word_errors/char_errors for a single pair)")
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up")
    total = EditCounts(0, 0, 0, 0)
    for k, (r, h) in enumerate(zip(references, hypotheses)):
        total = total + align(tokenize(r, f"references[{k}]"), tokenize(h, f"hypotheses[{k}]"))
    return total


def _as_chars(transcript, name: str) -> list:
    return list(" ".join(str(w) for w in _as_words(transcript, name)))


def word_errors(reference, hypothesis) -> EditCounts:
    """Word alignment counts of one pair; a string is split on whitespace."""
    return align(_as_words(reference, "reference"), _as_words(hypothesis, "hypothesis"))


def char_errors(reference, hypothesis) -> EditCounts:
    """Character alignment counts of one pair (words joined by single spaces)."""
    return align(_as_chars(reference, "reference"), _as_chars(hypothesis, "hypothesis"))


def corpus_word_errors(references, hypotheses) -> EditCounts:
    """Summed word alignment counts over paired lists of transcripts."""
    return _corpus_counts(references, hypotheses, _as_words)


def corpus_char_errors(references, hypotheses) -> EditCounts:
    """Summed character alignment counts over paired lists of transcripts."""
    return _corpus_counts(references, hypotheses, _as_chars)


def wer(references, hypotheses) -> float:
    """Corpus word error rate: total word edits over total reference words.

    Both arguments are lists of transcripts, each a string or a list of words.
    """
    return corpus_word_errors(references, hypotheses).rate


def cer(references, hypotheses) -> float:
    """Corpus character error rate: total character edits over total reference characters."""
    return corpus_char_errors(references, hypotheses).rate
