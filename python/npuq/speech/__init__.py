"""An offline speech task: connected digits synthesized with espeak-ng, log-mel features, WER/CER.

``load_digits("train")`` synthesizes and caches the default corpus on first use (about three minutes on
two cores; ``docs/speech.md`` describes it). numpy and scipy only; torch is imported by
:func:`collate` when it returns tensors.
"""

from npuq.speech.corpus import (
    DEFAULT_VARIANTS,
    DEFAULT_VOICES,
    SPLITS,
    CorruptCacheError,
    CorruptCacheWarning,
    DigitsConfig,
    EspeakError,
    EspeakNotFoundError,
    UtterancePlan,
    add_noise,
    available_variants,
    available_voices,
    build_digits,
    corpus_dir,
    default_cache_dir,
    find_espeak,
    plan_corpus,
    read_manifest,
    render_utterance,
    resample_to_16k,
    split_speakers,
    synthesize,
)
from npuq.speech.dataset import DigitsSplit, collate, load_digits, pad_sequences
from npuq.speech.features import (
    apply_global_stats,
    global_stats,
    log_mel,
    log_mel_batch,
    mel_filterbank,
    num_frames,
    utterance_normalize,
)
from npuq.speech.metrics import EditCounts, align, cer, char_errors, edit_distance, wer, word_errors
from npuq.speech.vocab import VOCAB, WORDS, Vocabulary

__all__ = [
    "DEFAULT_VARIANTS",
    "DEFAULT_VOICES",
    "SPLITS",
    "VOCAB",
    "WORDS",
    "CorruptCacheError",
    "CorruptCacheWarning",
    "DigitsConfig",
    "DigitsSplit",
    "EditCounts",
    "EspeakError",
    "EspeakNotFoundError",
    "UtterancePlan",
    "Vocabulary",
    "add_noise",
    "align",
    "apply_global_stats",
    "available_variants",
    "available_voices",
    "build_digits",
    "cer",
    "char_errors",
    "collate",
    "corpus_dir",
    "default_cache_dir",
    "edit_distance",
    "find_espeak",
    "global_stats",
    "load_digits",
    "log_mel",
    "log_mel_batch",
    "mel_filterbank",
    "num_frames",
    "pad_sequences",
    "plan_corpus",
    "read_manifest",
    "render_utterance",
    "resample_to_16k",
    "split_speakers",
    "synthesize",
    "utterance_normalize",
    "wer",
    "word_errors",
]
