"""An encoder-attention-decoder speech recognizer for the connected-digits task of :mod:`npuq.speech`.

* :mod:`~npuq.asr.model`: :class:`ASRConfig`, :class:`AttentionASR` (conv subsampling + BiLSTM encoder,
  location-aware attention, LSTM decoder);
* :mod:`~npuq.asr.decode`: :func:`greedy_decode`, :func:`beam_search`, :func:`score_sequences`,
  :func:`evaluate_wer`;
* :mod:`~npuq.asr.train`: :func:`train_asr` (seeded, resumable training with dev-WER model selection);
* :mod:`~npuq.asr.checkpoint`: :func:`save_asr_checkpoint`, :func:`load_asr_checkpoint` (the shipped
  model is ``load_asr_checkpoint("asr_digits")``, from the optional package ``npuq[checkpoints]``).

See ``docs/asr.md``.
"""

from npuq.asr.checkpoint import (
    ASR_FORMAT,
    ASRCheckpointError,
    is_asr_checkpoint,
    load_asr_checkpoint,
    save_asr_checkpoint,
)
from npuq.asr.decode import (
    Hypothesis,
    beam_search,
    decode_split,
    evaluate_wer,
    greedy_decode,
    normalized_score,
    score_sequences,
)
from npuq.asr.model import ASRConfig, AttentionASR, sequence_loss, subsampled_lengths, teacher_forcing_batch

__all__ = [
    "ASRCheckpointError",
    "ASRConfig",
    "ASR_FORMAT",
    "AttentionASR",
    "Hypothesis",
    "beam_search",
    "decode_split",
    "evaluate_wer",
    "greedy_decode",
    "is_asr_checkpoint",
    "load_asr_checkpoint",
    "normalized_score",
    "save_asr_checkpoint",
    "score_sequences",
    "sequence_loss",
    "subsampled_lengths",
    "teacher_forcing_batch",
]
