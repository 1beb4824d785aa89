"""The one checkpoint-name resolver (image and speech checkpoints) and the building blocks the example networks
share."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from npuq._shipped import INSTALL_HINT, checkpoint_dir
from npuq.models import blocks, build_model, mobilenet
from npuq.models.checkpoints import CheckpointNotFoundError, list_checkpoints, resolve_checkpoint


def test_names_and_paths_resolve_to_the_shipped_files(tmp_path):
    directory = checkpoint_dir()  # the installed npuq-checkpoints (or NPUQ_CHECKPOINT_DIR)
    assert directory is not None, INSTALL_HINT
    name = list_checkpoints()[0]
    shipped = directory / f"{name}.safetensors"
    assert resolve_checkpoint(name) == resolve_checkpoint(f"{name}.safetensors") == shipped
    assert resolve_checkpoint("asr_digits", kind="asr") == directory / "asr_digits.safetensors"
    own = tmp_path / "mine.safetensors"
    own.write_bytes(b"")
    assert resolve_checkpoint(own) == resolve_checkpoint(str(own), kind="asr") == own


def test_an_unknown_name_lists_the_checkpoints_of_its_kind():
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint 'nope'.*available: .*mobilenet") as image:
        resolve_checkpoint("nope")
    assert "asr_digits" not in str(image.value) and "npuq[checkpoints]" not in str(image.value)
    with pytest.raises(FileNotFoundError, match=r"no ASR checkpoint 'nope'.*files there: .*asr_digits") as speech:
        resolve_checkpoint("nope", kind="asr")
    assert "npuq[checkpoints]" not in str(speech.value)  # installed: a listing, no install hint
    with pytest.raises(ValueError, match="kind must be one of 'image', 'asr'"):
        resolve_checkpoint("asr_digits", kind="speech")


def test_the_networks_share_their_blocks():
    cnn = importlib.import_module("npuq.models.cnn")  # npuq.models.cnn is also the name of the builder
    assert mobilenet.scale_channels is blocks.scale_channels is cnn.scale_channels
    conv, bn = blocks.conv_bn(4, 8, 3, 2, groups=4)
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert (conv.stride, conv.padding, conv.groups, conv.bias) == ((2, 2), (1, 1), 4, None)
    torch.manual_seed(0)
    model = build_model("cnn", width=0.25)
    first = model.features[0]
    assert (first.kernel_size, first.padding, first.bias) == ((3, 3), (1, 1), None)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_the_resolver_recognizes_the_speech_format_by_npuq_asr_name():
    # npuq.models.checkpoints cannot import npuq.asr (which imports it): the format is written in both
    from npuq.asr import ASR_FORMAT
    from npuq.models import checkpoints

    assert checkpoints._ASR_FORMAT == ASR_FORMAT
