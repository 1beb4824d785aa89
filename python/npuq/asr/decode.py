"""Greedy and beam-search decoding of an :class:`~npuq.asr.model.AttentionASR`, sequence scoring, and
word/character error rates of a digits split.

All three (greedy, beam, scoring) take their per-token log-probabilities from the same full softmax over
the vocabulary; ``<pad>`` and ``<sos>`` are never emitted (they are skipped when choosing tokens), so a
hypothesis's score is exactly what :func:`score_sequences` gives for its tokens plus ``<eos>``.

A hypothesis ends at ``<eos>`` or after ``model.max_decode_steps`` tokens (a limit that grows with the
input length); one cut off by the limit has no ``<eos>`` and its score covers the tokens it has.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from npuq.speech.metrics import corpus_char_errors, corpus_word_errors
from npuq.speech.vocab import VOCAB

_NEVER_EMITTED = (VOCAB.pad_id, VOCAB.sos_id)


@dataclass
class Hypothesis:
    """Decoded token ids (words only: no ``<sos>``, no ``<eos>``), the summed log-probability of those
    tokens and of ``<eos>`` when it was emitted (``ended``), and the words."""

    tokens: list
    log_prob: float
    ended: bool

    @property
    def words(self) -> list:
        return VOCAB.decode(self.tokens)

    @property
    def emitted(self) -> int:
        """Tokens the decoder emitted, ``<eos>`` included."""
        return len(self.tokens) + int(self.ended)


def normalized_score(hypothesis: Hypothesis, length_penalty: float) -> float:
    """``log_prob / emitted ** length_penalty``: 0 compares raw log-probabilities (which favour short
    outputs), 1 the mean log-probability per token."""
    return hypothesis.log_prob / max(1, hypothesis.emitted) ** length_penalty


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module):
    """Eval mode (no dropout) and no gradients, the previous mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _choice_log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities, the same with the never-emitted tokens at -inf for choosing)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    choosable = log_probs.clone()
    choosable[:, list(_NEVER_EMITTED)] = float("-inf")
    return log_probs, choosable


def greedy_decode(model, features: torch.Tensor, lengths) -> list[Hypothesis]:
    """The most probable token at each step, for a whole padded batch at once."""
    with evaluation_mode(model):
        encoded = model.encode(features, lengths)
        batch = encoded.memory.shape[0]
        limits = model.max_decode_steps(encoded.lengths)
        state = model.initial_state(encoded)
        tokens = torch.full((batch,), VOCAB.sos_id, dtype=torch.int64, device=encoded.memory.device)
        active = torch.ones(batch, dtype=torch.bool)
        scores = torch.zeros(batch, dtype=torch.float64)
        ended = torch.zeros(batch, dtype=torch.bool)
        emitted: list[list] = [[] for _ in range(batch)]
        step = 0
        while bool(active.any()):
            logits, state = model.step(tokens, state, encoded)
            log_probs, choosable = _choice_log_probs(logits)
            tokens = choosable.argmax(dim=1)
            chosen = log_probs.gather(1, tokens[:, None]).squeeze(1).double().cpu()
            scores += torch.where(active, chosen, torch.zeros_like(chosen))
            step += 1
            for k in torch.nonzero(active).flatten().tolist():
                token = int(tokens[k])
                if token == VOCAB.eos_id:
                    ended[k] = True
                    active[k] = False
                else:
                    emitted[k].append(token)
                    if step >= int(limits[k]):
                        active[k] = False
        return [Hypothesis(emitted[k], float(scores[k]), bool(ended[k])) for k in range(batch)]


def beam_search(
    model, features: torch.Tensor, lengths, beam: int = 4, length_penalty: float = 1.0, nbest: bool = False
):
    """Beam search per utterance (the ``beam`` hypotheses of one utterance run as one batch).

    At every step the alive hypotheses are extended by every token and the ``beam`` best extensions by
    log-probability are kept; those ending in ``<eos>`` are set aside as finished. The search of an
    utterance stops when ``beam`` hypotheses have finished, none is alive, or the length limit is
    reached (the alive ones then count as finished). The result is the finished hypothesis with the best
    :func:`normalized_score`; with ``nbest=True``, all finished ones, best first. With ``beam=1`` this is
    exactly greedy decoding.
    """
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be an int >= 1, got {beam!r}")
    if not np.isfinite(length_penalty) or length_penalty < 0:
        raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty!r}")
    results = []
    with evaluation_mode(model):
        encoded_batch = model.encode(features, lengths)
        limits = model.max_decode_steps(encoded_batch.lengths)
        for k in range(encoded_batch.memory.shape[0]):
            frames = int(encoded_batch.lengths[k])
            one = encoded_batch.select(torch.tensor([k]))
            one.memory, one.keys, one.mask = one.memory[:, :frames], one.keys[:, :frames], one.mask[:, :frames]
            finished = _search_one(model, one, beam, int(limits[k]))
            finished.sort(key=lambda h: -normalized_score(h, length_penalty))
            results.append(finished if nbest else finished[0])
    return results


def _search_one(model, encoded, beam: int, limit: int) -> list[Hypothesis]:
    device = encoded.memory.device
    state = model.initial_state(encoded)
    alive_tokens: list[list] = [[]]
    alive_scores = torch.zeros(1, dtype=torch.float64)
    last = torch.tensor([VOCAB.sos_id], dtype=torch.int64, device=device)
    finished: list[Hypothesis] = []
    for step in range(1, limit + 1):
        n = len(alive_tokens)
        expanded = encoded if n == 1 else encoded.select(torch.zeros(n, dtype=torch.int64))
        logits, state = model.step(last, state, expanded)
        log_probs, choosable = _choice_log_probs(logits)
        candidates = alive_scores[:, None] + choosable.double().cpu()
        vocab = candidates.shape[1]
        count = min(beam, int(torch.isfinite(candidates).sum()))
        top_scores, top_index = candidates.flatten().topk(count)
        keep_rows, keep_tokens, keep_scores = [], [], []
        for score, index in zip(top_scores.tolist(), top_index.tolist()):
            row, token = divmod(index, vocab)
            if token == VOCAB.eos_id:
                finished.append(Hypothesis(list(alive_tokens[row]), score, True))
            else:
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_scores.append(score)
        new_tokens = [alive_tokens[r] + [t] for r, t in zip(keep_rows, keep_tokens)]
        if step == limit:
            finished.extend(Hypothesis(t, s, False) for t, s in zip(new_tokens, keep_scores))
            break
        if len(finished) >= beam or not keep_rows:
            break
        alive_tokens = new_tokens
        alive_scores = torch.tensor(keep_scores, dtype=torch.float64)
        index = torch.tensor(keep_rows, dtype=torch.int64, device=device)
        state = state.select(index)
        last = torch.tensor(keep_tokens, dtype=torch.int64, device=device)
    return finished


def score_sequences(model, features: torch.Tensor, lengths, token_sequences, ended=True) -> list[float]:
    """Summed log-probability of each word-token sequence (plus ``<eos>`` where ``ended``) given its
    utterance, by teacher forcing in eval mode."""
    token_sequences = [list(map(int, t)) for t in token_sequences]
    if len(token_sequences) != features.shape[0]:
        raise ValueError(f"{features.shape[0]} utterances but {len(token_sequences)} token sequences")
    ends = [bool(ended)] * len(token_sequences) if isinstance(ended, bool) else [bool(e) for e in ended]
    width = max(len(t) for t in token_sequences) + 1
    inputs = torch.full((len(token_sequences), width), VOCAB.pad_id, dtype=torch.int64)
    outputs = torch.full((len(token_sequences), width), VOCAB.pad_id, dtype=torch.int64)
    for k, tokens in enumerate(token_sequences):
        inputs[k, : len(tokens) + 1] = torch.tensor([VOCAB.sos_id] + tokens)
        tail = tokens + ([VOCAB.eos_id] if ends[k] else [])
        outputs[k, : len(tail)] = torch.tensor(tail, dtype=torch.int64)
    with evaluation_mode(model):
        logits = model(features, lengths, inputs.to(features.device))
        log_probs = torch.log_softmax(logits.float(), dim=-1).double().cpu()
    picked = log_probs.gather(2, outputs[:, :, None]).squeeze(2)
    picked = torch.where(outputs != VOCAB.pad_id, picked, torch.zeros_like(picked))
    return picked.sum(dim=1).tolist()


# -------------------------------------------------------------------------------- error rates


def _looks_normalized(split, normalize: str) -> None:
    """A cheap guard against features loaded with another normalization than the model's."""
    sample = [np.asarray(f, dtype=np.float64) for f in split.features[:8]]
    if normalize == "utterance":
        # utterance normalization leaves every dimension of every utterance with mean 0
        offset = max(float(np.abs(f.mean(axis=0)).max()) for f in sample)
        if offset > 1e-2:
            raise ValueError(
                f"the {split.name!r} features are not normalized per utterance (a per-dimension mean "
                f"reaches {offset:.3g}); load them with load_digits({split.name!r}, "
                f"normalize='utterance')"
            )
    elif normalize == "global":
        # raw log-mel sits around -10 (log energies); globally normalized features around 0
        level = float(np.abs(np.concatenate(sample).mean()))
        if level > 3.0:
            raise ValueError(
                f"the {split.name!r} features look like raw log-mel (mean {level:.3g} in magnitude); "
                f"load them with load_digits({split.name!r}, normalize='global')"
            )


def _decode_batches(model, split, count: int, beam: int, batch_size: int, length_penalty: float):
    """``(indices, hypotheses)`` per batch of the first ``count`` utterances, shortest batches first."""
    _looks_normalized(split, model.config.normalize)
    order = sorted(range(count), key=lambda i: len(split.features[i]))
    device = next(model.parameters()).device
    for start in range(0, count, batch_size):
        indices = order[start : start + batch_size]
        batch = split.collate(indices)
        features, lengths = batch["features"].to(device), batch["feature_lengths"]
        if beam == 1:
            found = greedy_decode(model, features, lengths)
        else:
            found = beam_search(model, features, lengths, beam=beam, length_penalty=length_penalty)
        yield indices, found


def _count(split, limit) -> int:
    count = len(split) if limit is None else min(int(limit), len(split))
    if count < 1:
        raise ValueError(f"nothing to decode: split {split.name!r} has {len(split)} utterances, limit={limit}")
    return count


def decode_split(
    model, split, beam: int = 1, limit: int | None = None, batch_size: int = 64, length_penalty: float = 1.0
) -> list[Hypothesis]:
    """Hypotheses for the first ``limit`` utterances of ``split`` (a :class:`npuq.speech.DigitsSplit` loaded
    with ``normalize=model.config.normalize``), in split order; greedy when ``beam == 1``. Batches are
    formed from utterances of similar length."""
    count = _count(split, limit)
    hypotheses: list = [None] * count
    for indices, found in _decode_batches(model, split, count, beam, batch_size, length_penalty):
        for i, hypothesis in zip(indices, found):
            hypotheses[i] = hypothesis
    return hypotheses


def evaluate_wer(
    model,
    split,
    beam: int = 1,
    limit: int | None = None,
    batch_size: int = 64,
    length_penalty: float = 1.0,
    give_up_above: float | None = None,
) -> dict:
    """Corpus WER and CER of ``model`` on the first ``limit`` utterances of ``split`` (greedy when
    ``beam == 1``, batched): ``{"wer", "cer", "utterances", "words", "word_errors", "seconds",
    "complete"}``.

    ``split`` is a :class:`npuq.speech.DigitsSplit` loaded with ``normalize=model.config.normalize``, or
    the name of a split of the default corpus (loaded so).

    ``give_up_above``: stop as soon as the word errors of the utterances decoded so far, divided by the
    reference words of *all* ``limit`` utterances, exceed this WER. That quotient is a lower bound of the
    final WER, so the model is certainly worse than the bound; the result then has ``complete = False``,
    ``wer`` and ``word_errors`` are that lower bound and ``cer`` covers the decoded utterances only. A
    broken model (one that never emits ``<eos>`` runs every hypothesis to the length limit) is recognised
    after its first batch instead of costing ten times a working model's decoding time.
    """
    import time

    if isinstance(split, str):
        from npuq.speech import load_digits

        split = load_digits(split, normalize=model.config.normalize, progress=False)
    if give_up_above is not None and not (
        isinstance(give_up_above, (int, float))
        and not isinstance(give_up_above, bool)
        and np.isfinite(give_up_above)
        and give_up_above > 0
    ):
        raise ValueError(f"give_up_above must be a WER > 0 (or None), got {give_up_above!r}")
    start = time.perf_counter()
    count = _count(split, limit)
    all_references = split.transcripts[:count]
    total_words = corpus_word_errors(all_references, all_references).reference_length
    decoded_refs, decoded_words, errors, complete = [], [], 0, True
    for indices, found in _decode_batches(model, split, count, beam, batch_size, length_penalty):
        refs = [split.transcripts[i] for i in indices]
        words = [h.words for h in found]
        decoded_refs += refs
        decoded_words += words
        errors += corpus_word_errors(refs, words).errors
        if give_up_above is not None and len(decoded_refs) < count and errors / max(total_words, 1) > give_up_above:
            complete = False
            break
    char_counts = corpus_char_errors(decoded_refs, decoded_words)
    rate = corpus_word_errors(decoded_refs, decoded_words).rate if complete else errors / max(total_words, 1)
    return {
        "wer": rate,
        "cer": char_counts.rate,
        "utterances": count,
        "words": total_words,
        "word_errors": errors,
        "seconds": time.perf_counter() - start,
        "complete": complete,
    }
