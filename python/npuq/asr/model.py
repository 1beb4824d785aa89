"""An encoder-attention-decoder recognizer for the connected-digits task (``npuq.speech``).

* Encoder: two stride-2 3x3 ``nn.Conv2d`` over (time, mel) (4x fewer frames, 4x fewer mel bins), a
  ``nn.Linear`` from the flattened channels x bins to ``encoder_input``, then a bidirectional ``nn.LSTM``
  run on packed sequences.
* Attention: location-aware (Chorowski et al., 2015): the energy of encoder frame t is
  ``v . tanh(W_q s + W_k h_t + W_f f_t)`` with ``f = conv1d(previous attention weights)``; padded frames
  get zero weight.
* Decoder: a one-layer ``nn.LSTM`` called one step at a time with an explicit ``(h, c)``; its input is
  the embedding of the previous token and the previous context; the output layer reads the new state
  and the new context through ``pre_output`` (``nn.Linear`` + tanh) and ``output`` (``nn.Linear``).

Every matrix that matters is a plain ``nn.Linear``, ``nn.Conv2d`` or ``nn.LSTM`` attribute, so
``npuq.lrf.factorize(model, {path: rank})`` can replace it; the decoder calls its LSTM through the
``nn.LSTM`` interface only, which ``FactorizedLSTM`` implements too.

Features are 80-dim log-mel frames normalized as ``config.normalize`` says (``load_digits(split,
normalize=config.normalize)``); the model itself does not normalize.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from npuq.speech.vocab import VOCAB

N_MELS = 80
NORMALIZATIONS = ("utterance", "global")


@dataclass(frozen=True)
class ASRConfig:
    """Sizes of an :class:`AttentionASR` (stored in checkpoint metadata to rebuild it)."""

    n_mels: int = N_MELS
    vocab_size: int = len(VOCAB)
    conv_channels: int = 32
    encoder_input: int = 160
    encoder_hidden: int = 128
    encoder_layers: int = 2
    embedding_dim: int = 48
    decoder_hidden: int = 192
    attention_dim: int = 128
    location_filters: int = 16
    location_kernel: int = 15
    pre_output_dim: int = 160
    dropout: float = 0.15
    # the decoder stops after this many tokens per encoder frame (plus one), whatever it emits
    max_tokens_per_frame: float = 0.5
    normalize: str = "utterance"

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"ASRConfig.{f.name} must be an int >= 1, got {value!r}")
        if self.n_mels != N_MELS:
            raise ValueError(f"ASRConfig.n_mels must be {N_MELS} (the features of npuq.speech), got {self.n_mels}")
        if self.vocab_size != len(VOCAB):
            raise ValueError(f"ASRConfig.vocab_size must be {len(VOCAB)} (npuq.speech.VOCAB), got {self.vocab_size}")
        if self.location_kernel % 2 == 0:
            raise ValueError(
                f"ASRConfig.location_kernel must be odd (centred on the frame), got {self.location_kernel}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"ASRConfig.dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.max_tokens_per_frame) and self.max_tokens_per_frame > 0):
            raise ValueError(f"ASRConfig.max_tokens_per_frame must be > 0, got {self.max_tokens_per_frame}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"ASRConfig.normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ASRConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ASRConfig fields: {unknown}")
        return cls(**values)


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the two stride-2 convolutions (kernel 3, padding 1): ``ceil(ceil(T / 2) / 2)``."""
    once = torch.div(lengths + 1, 2, rounding_mode="floor")
    return torch.div(once + 1, 2, rounding_mode="floor")


def _time_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) True on the valid frames."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


@dataclass
class DecoderState:
    """What the decoder carries from one step to the next, for a batch of hypotheses."""

    h: torch.Tensor  # (1, N, decoder_hidden)
    c: torch.Tensor  # (1, N, decoder_hidden)
    context: torch.Tensor  # (N, encoder_dim)
    attention: torch.Tensor  # (N, T) previous attention weights

    def select(self, index: torch.Tensor) -> "DecoderState":
        return DecoderState(self.h[:, index], self.c[:, index], self.context[index], self.attention[index])


@dataclass
class Encoded:
    """Encoder output of a batch: ``memory`` (B, T, D), its attention keys, lengths and mask."""

    memory: torch.Tensor
    keys: torch.Tensor
    lengths: torch.Tensor
    mask: torch.Tensor

    def select(self, index: torch.Tensor) -> "Encoded":
        return Encoded(self.memory[index], self.keys[index], self.lengths[index], self.mask[index])


class AttentionASR(nn.Module):
    """Encoder (conv subsampling + BiLSTM), location-aware attention, LSTM decoder; see the module doc."""

    def __init__(self, config: ASRConfig | None = None):
        super().__init__()
        config = config or ASRConfig()
        if not isinstance(config, ASRConfig):
            raise TypeError(f"config must be an ASRConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.vocab = VOCAB
        channels = cfg.conv_channels
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        subsampled_mels = (cfg.n_mels + 3) // 4
        self.encoder_projection = nn.Linear(channels * subsampled_mels, cfg.encoder_input)
        self.encoder_lstm = nn.LSTM(
            cfg.encoder_input,
            cfg.encoder_hidden,
            num_layers=cfg.encoder_layers,
            batch_first=True,
            bidirectional=True,
            dropout=cfg.dropout if cfg.encoder_layers > 1 else 0.0,
        )
        self.encoder_dim = 2 * cfg.encoder_hidden

        self.attention_key = nn.Linear(self.encoder_dim, cfg.attention_dim)
        self.attention_query = nn.Linear(cfg.decoder_hidden, cfg.attention_dim, bias=False)
        # a Conv1d, not a Conv2d: it holds only location_filters x location_kernel weights, nothing to factorize
        self.location_conv = nn.Conv1d(
            1, cfg.location_filters, cfg.location_kernel, padding=cfg.location_kernel // 2, bias=False
        )
        self.attention_location = nn.Linear(cfg.location_filters, cfg.attention_dim, bias=False)
        self.attention_energy = nn.Linear(cfg.attention_dim, 1, bias=False)

        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim, padding_idx=VOCAB.pad_id)
        self.decoder_lstm = nn.LSTM(cfg.embedding_dim + self.encoder_dim, cfg.decoder_hidden)
        self.pre_output = nn.Linear(cfg.decoder_hidden + self.encoder_dim, cfg.pre_output_dim)
        self.output = nn.Linear(cfg.pre_output_dim, cfg.vocab_size)
        self.dropout = nn.Dropout(cfg.dropout)

    # ---------------------------------------------------------------------------------- checks

    def _check_input(self, features, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            raise TypeError(
                f"features must be a floating-point tensor (batch, frames, {self.config.n_mels}), got "
                f"{type(features).__name__} {getattr(features, 'dtype', '')}"
            )
        if features.dim() != 3:
            raise ValueError(
                f"features must be 3-D (batch, frames, {self.config.n_mels}), got shape {tuple(features.shape)}"
            )
        if features.shape[2] != self.config.n_mels:
            raise ValueError(
                f"features have {features.shape[2]} dimensions per frame; the model expects "
                f"{self.config.n_mels} log-mel bins"
            )
        batch, frames = features.shape[0], features.shape[1]
        if batch == 0:
            raise ValueError("features hold an empty batch")
        lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.shape[0] != batch or lengths.is_floating_point():
            raise ValueError(
                f"lengths must be an integer tensor of shape ({batch},), got {lengths.dtype} {tuple(lengths.shape)}"
            )
        lengths = lengths.to(torch.int64).cpu()
        if int(lengths.min()) < 1:
            raise ValueError(f"every utterance needs at least one frame; lengths hold {int(lengths.min())}")
        if int(lengths.max()) > frames:
            raise ValueError(f"a length ({int(lengths.max())}) exceeds the {frames} frames of the padded batch")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or infinity")
        return features, lengths

    # --------------------------------------------------------------------------------- encoder

    def encode(self, features: torch.Tensor, lengths) -> Encoded:
        """Encode a zero- or otherwise padded batch ``(B, T, 80)`` with ``lengths`` (B,)."""
        features, lengths = self._check_input(features, lengths)
        device = features.device
        # frames past an utterance's end are zeroed before and after each convolution, so that they read as
        # the convolution's own zero padding and the valid outputs do not depend on how much padding follows
        x = features * _time_mask(lengths, features.shape[1]).to(device, features.dtype)[:, :, None]
        x = x.unsqueeze(1)  # (B, 1, T, mels)
        half = torch.div(lengths + 1, 2, rounding_mode="floor")
        x = F.relu(self.conv1(x))
        x = x * _time_mask(half, x.shape[2]).to(device, x.dtype)[:, None, :, None]
        quarter = subsampled_lengths(lengths)
        x = F.relu(self.conv2(x))
        x = x * _time_mask(quarter, x.shape[2]).to(device, x.dtype)[:, None, :, None]
        batch, channels, steps, mels = x.shape
        x = x.permute(0, 2, 1, 3).reshape(batch, steps, channels * mels)
        x = self.dropout(F.relu(self.encoder_projection(x)))
        packed = pack_padded_sequence(x, quarter, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder_lstm(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        memory = self.dropout(memory)
        mask = _time_mask(quarter, steps).to(device)
        return Encoded(memory, self.attention_key(memory), quarter, mask)

    # -------------------------------------------------------------------------------- decoder

    def initial_state(self, encoded: Encoded) -> DecoderState:
        batch, steps, _ = encoded.memory.shape
        h = encoded.memory.new_zeros(1, batch, self.config.decoder_hidden)
        # the first alignment sits on the first frame: the location filters then start from the utterance's start
        attention = encoded.memory.new_zeros(batch, steps)
        attention[:, 0] = 1.0
        return DecoderState(h, h.clone(), encoded.memory.new_zeros(batch, self.encoder_dim), attention)

    def attend(self, query: torch.Tensor, encoded: Encoded, previous: torch.Tensor):
        """Attention weights (N, T) and context (N, D) for decoder states ``query`` (N, H)."""
        location = self.location_conv(previous.unsqueeze(1)).transpose(1, 2)  # (N, T, filters)
        energy = self.attention_energy(
            torch.tanh(encoded.keys + self.attention_query(query).unsqueeze(1) + self.attention_location(location))
        ).squeeze(2)
        energy = energy.masked_fill(~encoded.mask, float("-inf"))
        weights = torch.softmax(energy, dim=1)
        context = torch.bmm(weights.unsqueeze(1), encoded.memory).squeeze(1)
        return weights, context

    def step(self, tokens: torch.Tensor, state: DecoderState, encoded: Encoded):
        """One decoder step: logits (N, vocab) of the token after ``tokens`` (N,), and the next state."""
        embedded = self.dropout(self.embedding(tokens))
        decoder_input = torch.cat([embedded, state.context], dim=1).unsqueeze(0)  # (1, N, E + D)
        out, (h, c) = self.decoder_lstm(decoder_input, (state.h, state.c))
        query = out.squeeze(0)
        weights, context = self.attend(query, encoded, state.attention)
        hidden = torch.tanh(self.pre_output(torch.cat([query, context], dim=1)))
        logits = self.output(self.dropout(hidden))
        return logits, DecoderState(h, c, context, weights)

    def forward(self, features: torch.Tensor, lengths, targets_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, vocab): ``targets_in`` (B, L) starts with ``<sos>``; position i
        predicts the token after ``targets_in[:, i]``."""
        if not isinstance(targets_in, torch.Tensor) or targets_in.dim() != 2 or targets_in.is_floating_point():
            raise ValueError(
                f"targets_in must be an integer tensor (batch, steps), got "
                f"{getattr(targets_in, 'dtype', type(targets_in).__name__)} "
                f"{tuple(getattr(targets_in, 'shape', ()))}"
            )
        if targets_in.shape[0] != features.shape[0]:
            raise ValueError(f"{features.shape[0]} utterances but {targets_in.shape[0]} target sequences")
        if targets_in.numel() and (int(targets_in.min()) < 0 or int(targets_in.max()) >= self.config.vocab_size):
            raise ValueError(f"target token ids must be in [0, {self.config.vocab_size - 1}]")
        encoded = self.encode(features, lengths)
        state = self.initial_state(encoded)
        steps = []
        for i in range(targets_in.shape[1]):
            logits, state = self.step(targets_in[:, i], state, encoded)
            steps.append(logits)
        return torch.stack(steps, dim=1)

    def max_decode_steps(self, encoded_lengths: torch.Tensor) -> torch.Tensor:
        """Per utterance, the most tokens (``<eos>`` included) a decoder may emit."""
        limit = torch.ceil(encoded_lengths.to(torch.float64) * self.config.max_tokens_per_frame).to(torch.int64)
        return limit + 1

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def sequence_loss(logits: torch.Tensor, targets_out: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the non-pad positions of ``targets_out`` (B, L)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets_out.reshape(-1),
        ignore_index=VOCAB.pad_id,
        label_smoothing=label_smoothing,
    )


def teacher_forcing_batch(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder inputs, decoder targets) from a :func:`npuq.speech.collate` batch made with
    ``add_sos=True, add_eos=True``: the targets shifted by one, ``<eos>`` dropped from the inputs."""
    targets = batch["targets"]
    inputs = targets[:, :-1].clone()
    inputs[inputs == VOCAB.eos_id] = VOCAB.pad_id
    return inputs, targets[:, 1:]
