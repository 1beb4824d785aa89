"""The ``asr_digits`` rank-search task: the attention recognizer of :mod:`npuq.asr` on the digits corpus.

* model: the shipped ``asr_digits`` checkpoint, another :func:`npuq.asr.save_asr_checkpoint` file, or a
  factorized one written by :func:`save_asr_lrf_checkpoint` (its ranks in the ``lrf_ranks`` metadata);
* error: greedy WER (:func:`npuq.asr.evaluate_wer`) on the first ``dev_size`` utterances of the dev split
  (its speakers are in neither the training nor the test split), and on the test split for the report;
* fine-tuning: :func:`npuq.distill.seq2seq.finetune_seq2seq_with_teacher` on the first ``train_limit``
  utterances of the training split, the original model as teacher, in length-bucketed batches.

Nothing here reads speech data before a method needs it: registering the task costs an import only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch.nn as nn

from npuq.registry import SEARCH_TASKS

__all__ = ["AsrDigitsTask", "load_asr_lrf_checkpoint", "save_asr_lrf_checkpoint"]


# ------------------------------------------------------------------------------ factorized checkpoints
def save_asr_lrf_checkpoint(model: nn.Module, path, metadata: dict, ranks: dict) -> Path:
    """A factorized :class:`~npuq.asr.AttentionASR` as an ASR checkpoint: its ``state_dict``, the metadata
    of the checkpoint it came from and ``lrf_ranks`` (JSON), from which :func:`load_asr_lrf_checkpoint`
    rebuilds the structure."""
    from npuq.asr import save_asr_checkpoint

    # a training run's history describes the dense model, not this one
    keep = {k: v for k, v in metadata.items() if k not in ("history", "format", "config", "lrf_ranks")}
    return save_asr_checkpoint(model, path, {**keep, "lrf_ranks": json.dumps(ranks)})


def load_asr_lrf_checkpoint(name_or_path="asr_digits") -> tuple[nn.Module, dict]:
    """``(model in eval mode, metadata)`` from a dense ASR checkpoint (as :func:`npuq.asr.load_asr_checkpoint`)
    or a factorized one written by :func:`save_asr_lrf_checkpoint`; ``metadata["lrf_ranks"]`` is then a dict."""
    from safetensors import safe_open

    from npuq.asr import ASR_FORMAT, ASRCheckpointError, ASRConfig, AttentionASR, load_asr_checkpoint
    from npuq.asr.checkpoint import parse_asr_metadata
    from npuq.lrf.factorize import factorize
    from npuq.models.checkpoints import resolve_checkpoint

    path = resolve_checkpoint(name_or_path, kind="asr")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            if "lrf_ranks" not in raw:
                tensors = None
            else:
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # the reader raises its own error types for bad headers
        raise ASRCheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if tensors is None:
        return load_asr_checkpoint(path)
    if raw.get("format") != ASR_FORMAT:
        raise ASRCheckpointError(
            f"{path}: metadata format is {raw.get('format')!r}, not {ASR_FORMAT!r}: not an ASR checkpoint"
        )
    try:
        meta = parse_asr_metadata(raw)
        meta["lrf_ranks"] = ranks = json.loads(meta["lrf_ranks"])
        config = ASRConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ASRCheckpointError(
            f"{path}: cannot rebuild the factorized model from its config and lrf_ranks metadata ({exc})"
        ) from None
    model = factorize(AttentionASR(config), ranks, above_break_even="ignore")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ASRCheckpointError(
            f"{path}: the tensors do not fit the model of its config factorized with its "
            f"lrf_ranks ({str(exc).splitlines()[0]})"
        ) from None
    return model.eval(), meta


def _length_batches(lengths, batch_size: int, seed: int, epoch: int, jitter: float) -> list:
    """Batches of utterances of similar length (sorted by length plus a uniform jitter, so that batches differ
    from epoch to epoch), in a random order; seeded by ``(seed, epoch)``."""
    import numpy as np

    rng = np.random.default_rng([seed, epoch])
    keys = np.asarray(lengths, dtype=np.float64) + rng.uniform(0, jitter, size=len(lengths))
    order = np.argsort(keys, kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ------------------------------------------------------------------------------------------ the task
@SEARCH_TASKS.register("asr_digits")
class AsrDigitsTask:
    """The digits recognizer: error = greedy word error rate."""

    @dataclass
    class Options:
        model: str = "asr_digits"  # a shipped ASR checkpoint name or a .safetensors path
        dev_size: int = 300  # development utterances: the first ones of the dev split
        test_limit: int = 0  # test utterances for the reported test WER (0: the whole split)
        train_limit: int = 4000  # fine-tuning utterances: the first ones of the training split
        finetune_epochs: int = 2
        finetune_lr: float = 1e-3
        finetune_schedule: str = "constant"  # or "cosine": from finetune_lr down to 0 over all the steps
        batch_size: int = 32
        clip_norm: float = 5.0
        temperature: float = 2.0
        kd_weight: float = 0.9
        task_weight: float = 0.1
        spec_augment: bool = False  # light masks (one band of <= 8 mel bins, one run of <= 5 frames)
        bucket_jitter: int = 30  # frames of jitter in the length-sorting of the batches
        seed: int = 0
        eval_batch: int = 64
        give_up_wer: float = 0.0  # > 0: a dev evaluation stops once the WER is surely above it
        cache_dir: str = ""  # "": the default corpus cache ($NPUQ_DATA_DIR or ~/.cache/npuq)
        corpus_seed: int = 0  # the DigitsConfig of the corpus (defaults: the shipped model's)
        corpus_train_size: int = 4000
        corpus_dev_size: int = 300
        corpus_test_size: int = 500
        progress: bool = True

        def __post_init__(self):
            for name in (
                "dev_size",
                "train_limit",
                "finetune_epochs",
                "batch_size",
                "eval_batch",
                "corpus_train_size",
                "corpus_dev_size",
                "corpus_test_size",
            ):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
            for name in ("test_limit", "bucket_jitter", "seed", "corpus_seed"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
            if self.dev_size > self.corpus_dev_size:
                raise ValueError(
                    f"dev_size must be at most the corpus's {self.corpus_dev_size} dev utterances "
                    f"(corpus_dev_size), got {self.dev_size}"
                )
            if self.train_limit > self.corpus_train_size:
                raise ValueError(
                    f"train_limit must be at most the corpus's {self.corpus_train_size} training "
                    f"utterances (corpus_train_size), got {self.train_limit}"
                )
            if self.test_limit > self.corpus_test_size:
                raise ValueError(
                    f"test_limit must be at most the corpus's {self.corpus_test_size} test "
                    f"utterances (corpus_test_size), got {self.test_limit}"
                )
            if self.finetune_schedule not in ("constant", "cosine"):
                raise ValueError(f"finetune_schedule must be 'constant' or 'cosine', got {self.finetune_schedule!r}")
            if not self.give_up_wer >= 0:
                raise ValueError(
                    f"give_up_wer must be >= 0 (0: always decode the whole dev set), got {self.give_up_wer}"
                )
            for name in ("finetune_lr", "temperature", "clip_norm"):
                if getattr(self, name) <= 0:
                    raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
            for name in ("kd_weight", "task_weight"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
            if self.kd_weight == 0 and self.task_weight == 0:
                raise ValueError("kd_weight and task_weight are both 0: fine-tuning would have no loss")

    def __init__(self, options: Options):
        self.options = options
        self._splits: dict = {}
        self.metadata: dict = {}

    # ------------------------------------------------------------------------------------------ data
    def corpus_config(self):
        from npuq.speech import DigitsConfig

        o = self.options
        return DigitsConfig(
            seed=o.corpus_seed, train_size=o.corpus_train_size, dev_size=o.corpus_dev_size, test_size=o.corpus_test_size
        )

    def split(self, name: str, normalize: str = "utterance"):
        """A split of the task's corpus (built and cached on first use), features normalized as the model
        expects."""
        key = (name, normalize)
        if key not in self._splits:
            from npuq.speech import load_digits

            self._splits[key] = load_digits(
                name,
                config=self.corpus_config(),
                cache_dir=self.options.cache_dir or None,
                normalize=normalize,
                progress=self.options.progress,
            )
        return self._splits[key]

    # ----------------------------------------------------------------------------------------- model
    def load_model(self) -> nn.Module:
        model, self.metadata = load_asr_lrf_checkpoint(self.options.model)
        return model

    def _wer(self, model: nn.Module, split: str, limit: int | None, give_up_above: float | None = None) -> float:
        from npuq.asr import evaluate_wer

        data = self.split(split, model.config.normalize)
        return float(
            evaluate_wer(
                model, data, beam=1, limit=limit, batch_size=self.options.eval_batch, give_up_above=give_up_above
            )["wer"]
        )

    def evaluate(self, model: nn.Module) -> float:
        """Dev WER; with ``give_up_wer`` a model surely above it gets the lower bound reached when decoding
        stopped (candidates that bad are all equally useless to the search)."""
        return self._wer(model, "dev", self.options.dev_size, self.options.give_up_wer or None)

    def test_error(self, model: nn.Module) -> float:
        return self._wer(model, "test", self.options.test_limit or None)

    # ------------------------------------------------------------------------------------ fine-tuning
    def finetune(self, model: nn.Module, teacher: nn.Module) -> nn.Module:
        self.last_finetune = self.distill(model, teacher)
        return model.eval()

    def distill(self, model: nn.Module, teacher: nn.Module, steps: int | None = None) -> dict:
        """Fine-tune ``model`` in place with ``teacher``; ``steps`` stops after that many batches (the first
        ones of each epoch's order). Returns :func:`~npuq.distill.seq2seq.finetune_seq2seq_with_teacher`'s
        summary."""
        from npuq.asr import teacher_forcing_batch
        from npuq.distill.seq2seq import finetune_seq2seq_with_teacher
        from npuq.speech import VOCAB

        o = self.options
        if model.config.normalize != teacher.config.normalize:
            raise ValueError(
                f"the student reads {model.config.normalize!r}-normalized features, the teacher "
                f"{teacher.config.normalize!r}-normalized ones: they cannot share batches"
            )
        data = self.split("train", model.config.normalize)
        count = min(o.train_limit, len(data))
        lengths = [len(f) for f in data.features[:count]]

        def batches(epoch):
            order = _length_batches(lengths, o.batch_size, o.seed, epoch, o.bucket_jitter)
            for indices in order[:steps] if steps is not None else order:
                batch = data.collate(indices, add_sos=True, add_eos=True)
                inputs, targets = teacher_forcing_batch(batch)
                yield (batch["features"], batch["feature_lengths"], inputs), targets

        per_epoch = -(-count // o.batch_size)
        if steps is not None:
            per_epoch = min(per_epoch, steps)
        return finetune_seq2seq_with_teacher(
            model,
            teacher,
            batches,
            epochs=o.finetune_epochs,
            lr=o.finetune_lr,
            lr_schedule=o.finetune_schedule,
            total_steps=per_epoch * o.finetune_epochs,
            clip_norm=o.clip_norm,
            temperature=o.temperature,
            kd_weight=o.kd_weight,
            task_weight=o.task_weight,
            pad_id=VOCAB.pad_id,
            seed=o.seed,
            threads=1,
            student_view=_light_spec_augment if o.spec_augment else None,
            progress=o.progress,
            desc="distillation epoch",
        )

    def describe(self) -> dict:
        results = self.metadata.get("results") or {}
        return {
            "task": "asr_digits",
            **{f.name: getattr(self.options, f.name) for f in fields(self.options)},
            "checkpoint_dev_wer": (results.get("dev_greedy") or {}).get("wer"),
            "checkpoint_test_wer": (results.get("test_greedy") or {}).get("wer"),
            "lrf_ranks": self.metadata.get("lrf_ranks"),
        }


def _light_spec_augment(inputs: tuple, generator):
    """The student's view with one frequency band and one run of frames masked per utterance: lighter than
    training's two and two, since fine-tuning should recover the teacher rather than regularize anew."""
    from npuq.asr.train import TrainOptions, spec_augment

    features, lengths, targets_in = inputs
    light = TrainOptions(freq_masks=1, freq_mask_width=8, time_masks=1, time_mask_width=5)
    return spec_augment(features, lengths, light, generator), lengths, targets_in
