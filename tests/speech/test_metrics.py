"""WER and CER of npuq.speech: hand-computed alignments and properties of the edit distance."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from npuq.speech import metrics as M

words = st.lists(st.sampled_from(["oh", "zero", "one", "two", "three"]), max_size=8)


@pytest.mark.parametrize(
    "ref, hyp, s, d, i",
    [
        ("one two three", "one two three", 0, 0, 0),
        ("one two three", "one too three", 1, 0, 0),
        ("one two three", "one three", 0, 1, 0),
        ("one two three", "one two two three", 0, 0, 1),
        ("one two three", "", 0, 3, 0),
        ("", "one two", 0, 0, 2),
        ("one two three four", "two three four five", 0, 1, 1),
        ("oh seven", "zero seven eight", 1, 0, 1),
        ("one", "two three four", 1, 0, 2),
    ],
)
def test_hand_computed_alignments(ref, hyp, s, d, i):
    counts = M.word_errors(ref, hyp)
    assert (counts.substitutions, counts.deletions, counts.insertions) == (s, d, i)
    assert counts.errors == M.edit_distance(ref.split(), hyp.split()) == s + d + i


def test_corpus_wer_is_total_edits_over_total_words():
    refs = ["one two three four", "five"]
    hyps = ["one two three four", "six"]
    # per-utterance rates 0 and 1 average 0.5; the corpus rate weighs by reference length
    assert M.wer(refs, hyps) == pytest.approx(1 / 5)
    assert M.wer([["one"]], [["one", "two", "three"]]) == pytest.approx(2.0)


def test_cer_counts_characters_and_spaces():
    assert M.cer(["one two"], ["one too"]) == pytest.approx(1 / 7)
    assert M.char_errors("oh", "zero").errors == 4  # o->z, h->e, insert r, o
    assert M.cer([["oh"]], [["oh"]]) == 0.0


def test_empty_references():
    assert M.wer([""], [""]) == 0.0
    assert M.wer([""], ["one"]) == float("inf")
    assert M.wer([], []) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        M.wer(["one", "two"], ["one"])
    with pytest.raises(TypeError, match="lists of transcripts"):
        M.wer("one two", "one two")
    with pytest.raises(TypeError, match="references\\[0\\]"):
        M.wer([3], ["one"])


@given(words)
def test_identity_has_no_error(x):
    assert M.word_errors(x, x).errors == 0
    if x:
        assert M.wer([x], [x]) == 0.0


@given(words, words)
def test_counts_are_consistent_and_bounded(r, h):
    c = M.word_errors(r, h)
    assert c.correct + c.substitutions + c.deletions == len(r)
    assert c.correct + c.substitutions + c.insertions == len(h)
    assert abs(len(r) - len(h)) <= c.errors <= max(len(r), len(h))
    if r:
        assert c.rate == c.errors / len(r) <= max(len(r), len(h)) / len(r)


@given(words, words)
def test_symmetry_swaps_deletions_and_insertions(r, h):
    a, b = M.word_errors(r, h), M.word_errors(h, r)
    assert a.errors == b.errors
    assert a.deletions - a.insertions == b.insertions - b.deletions == len(r) - len(h)


@given(words, words, words)
def test_triangle_inequality(a, b, c):
    assert M.edit_distance(a, c) <= M.edit_distance(a, b) + M.edit_distance(b, c)


@given(st.lists(st.tuples(words, words), min_size=1, max_size=5))
def test_corpus_counts_are_sums(pairs):
    refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
    total = M.corpus_word_errors(refs, hyps)
    assert total.errors == sum(M.edit_distance(r, h) for r, h in pairs)
    assert total.reference_length == sum(len(r) for r in refs)


@given(st.lists(st.sampled_from(["one", "two"]), min_size=1, max_size=5), st.integers(1, 10))
def test_insertions_push_wer_above_one(r, extra):
    h = r + ["oh"] * (len(r) + extra)
    assert M.wer([r], [h]) > 1.0
