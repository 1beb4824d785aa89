"""Fashion-MNIST loader, MobileNet models, deterministic training and checkpoints.

Fast: synthetic IDX files stand in for the dataset wherever the real one is not the point.
"""

import gzip
import json
import operator
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from npuq.apps.training import augment, dead_channel_stats, seed_everything, train
from npuq.data import (
    CLASSES,
    DatasetNotFoundError,
    IdxFormatError,
    fashion_mnist_loader,
    fashion_mnist_tensors,
    load_fashion_mnist,
    read_idx,
)
from npuq.data.fashion_mnist import DEFAULT_ROOT, parse_idx
from npuq.models import MODELS, build_model, count_macs, scale_channels
from npuq.models.checkpoints import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one thread is as fast, and far faster on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------- IDX files
def idx_bytes(array: np.ndarray) -> bytes:
    codes = {
        np.dtype(np.uint8): 0x08,
        np.dtype(np.int8): 0x09,
        np.dtype(np.int16): 0x0B,
        np.dtype(np.int32): 0x0C,
        np.dtype(np.float32): 0x0D,
        np.dtype(np.float64): 0x0E,
    }
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, compress):
    data = idx_bytes(array)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_fake_fashion(root, n_train=256, n_test=64, compress=True, seed=0):
    """A tiny dataset in the Debian layout: learnable (class = brightest quadrant-ish pattern)."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 6, 4:24] = 250
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return root


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_roundtrip(tmp_path, compress, dtype):
    array = (
        (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
        if dtype != np.uint8
        else np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    )
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array, compress)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\0", "trailing bytes"),
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "type code"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b[:2], "too short"),
    ],
)
def test_corrupt_idx_names_file(tmp_path, mutate, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(idx_bytes(np.zeros((3, 28, 28), np.uint8))))
    with pytest.raises(IdxFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_names_file(tmp_path):
    path = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(1000, dtype=np.uint8) % 10, True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(IdxFormatError, match="corrupt or truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_parse_idx_rejects_zero_dims():
    with pytest.raises(IdxFormatError, match="zero dimensions"):
        parse_idx(bytes([0, 0, 8, 0]), "x")


# ------------------------------------------------------------------------------------ dataset API
def test_missing_dataset_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist("train", root=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in msg
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "NPUQ_FASHION_MNIST" in msg


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


@pytest.mark.parametrize("compress", [True, False])
def test_fake_dataset_via_env(tmp_path, monkeypatch, compress):
    write_fake_fashion(tmp_path, compress=compress)
    monkeypatch.setenv("NPUQ_FASHION_MNIST", str(tmp_path))
    images, labels = load_fashion_mnist("test")
    assert images.shape == (64, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (64,) and labels.dtype == np.int64
    assert load_fashion_mnist("test")[0] is images  # cached
    with pytest.raises(ValueError):
        images[0, 0, 0] = 1  # the cached array is read-only
    x, y = fashion_mnist_tensors("test")
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    expected = (images[3].astype(np.float32) / 255 - 0.2860) / 0.3530
    np.testing.assert_allclose(x[3, 0].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_label_count_mismatch(tmp_path):
    write_fake_fashion(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8), True)
    with pytest.raises(IdxFormatError, match="10 labels for 64 images"):
        load_fashion_mnist("test", root=tmp_path)


def test_loader_determinism_and_limit(tmp_path):
    write_fake_fashion(tmp_path)

    def batches(**kw):
        return [(x.clone(), y.clone()) for x, y in fashion_mnist_loader("train", root=tmp_path, **kw)]

    a = batches(batch_size=50, shuffle=True, seed=3)
    b = batches(batch_size=50, shuffle=True, seed=3)
    c = batches(batch_size=50, shuffle=True, seed=4)
    assert [len(y) for _, y in a] == [50, 50, 50, 50, 50, 6]
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    # a second pass over one loader draws a new (still seeded) order
    loader = fashion_mnist_loader("train", root=tmp_path, batch_size=256, shuffle=True, seed=3)
    first, second = [y for _, y in loader], [y for _, y in loader]
    assert not torch.equal(first[0], second[0])
    x_all, _ = fashion_mnist_tensors("train", root=tmp_path)
    plain = batches(batch_size=32, limit=70)
    assert [len(y) for _, y in plain] == [32, 32, 6]
    assert torch.equal(torch.cat([x for x, _ in plain]), x_all[:70])
    assert len(batches(batch_size=32, limit=70, drop_last=True)) == 2


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_dataset_shapes(monkeypatch):
    monkeypatch.delenv("NPUQ_FASHION_MNIST", raising=False)
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.min() == 0 and labels.max() == len(CLASSES) - 1
        assert np.bincount(labels).tolist() == [n // 10] * 10
    x, _ = fashion_mnist_tensors("train")
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3


# ----------------------------------------------------------------------------------------- models
def test_scale_channels():
    assert scale_channels(32, 0.5) == 16
    assert scale_channels(24, 0.5) == 16  # 12 rounds up to 16
    assert scale_channels(20, 0.5) == 8  # 10 rounds down to 8
    assert scale_channels(16, 0.25) == 8  # never below 8
    assert scale_channels(1280, 0.5) == 640
    assert scale_channels(100, 1.0) == 104
    with pytest.raises(ValueError):
        scale_channels(32, 0)


@pytest.mark.parametrize("name", sorted(m for m in MODELS if m.startswith("mobilenet")))
def test_model_traces_and_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, width=0.5).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 10)
        torch.testing.assert_close(traced(x), out)
    adds = [n for n in traced.graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert (len(adds) > 0) == (name == "mobilenet_v2")
    macs, rows = count_macs(model, per_layer=True)
    assert 1e6 < macs < 6e6
    assert rows[0][5] == (14, 14) and rows[-2][5] == (4, 4)  # stride-2 stem, body ends at 4x4
    assert all(r[3] % 8 == 0 for r in rows if r[1] != "fc")
    assert model.training is False


@pytest.mark.parametrize("width", [0.25, 1.0, 2.0])
def test_cnn_traces_and_its_stage_outputs_exist(width):
    torch.manual_seed(0)
    model = build_model("cnn", width=width).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))
    modules = dict(model.named_modules())
    assert all(isinstance(modules[p], torch.nn.ReLU) for p in model.stage_outputs)
    wide = build_model("cnn", width=2 * width)
    assert sum(p.numel() for p in wide.parameters()) > 3 * sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="width"):
        build_model("cnn", width=0)


def test_build_model_errors_and_width():
    with pytest.raises(ValueError, match="mobilenet_v1"):
        build_model("resnet18")
    small, big = build_model("mobilenet_v2", width=0.5), build_model("mobilenet_v2", width=1.0)
    assert count_macs(big) > 2 * count_macs(small)
    assert build_model("mobilenet_v2", width=0.5).classifier.in_features == 640
    with_dropout = torch.fx.symbolic_trace(build_model("mobilenet_v2", dropout=0.2))
    assert any(n.target == "dropout" for n in with_dropout.graph.nodes)


# --------------------------------------------------------------------------------------- training
def test_augment_is_a_seeded_crop_or_flip():
    x = torch.randn(16, 1, 28, 28)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-0.2860 / 0.3530)
    for i in range(16):
        crops = [padded[i, :, dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(a[i], c) or torch.equal(a[i], c.flip(-1)) for c in crops)


def test_training_is_deterministic(tmp_path):
    write_fake_fashion(tmp_path)
    states = []
    for _ in range(2):
        seed_everything(0)
        model = build_model("mobilenet_v2", width=0.5)
        result = train(
            model, "adam-l2", epochs=1, seed=0, batch_size=32, root=tmp_path, progress=False, max_steps=3, threads=1
        )
        states.append(model.state_dict())
    assert result["steps"] == 3 and result["threads"] == 1
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not model.training and model.features[0][0].weight.is_contiguous()


def test_sgd_recipe_learns(tmp_path):
    write_fake_fashion(tmp_path, n_train=128)
    seed_everything(0)
    model = build_model("mobilenet_v1", width=0.5)
    result = train(
        model, "sgd", epochs=3, seed=0, batch_size=32, root=tmp_path, progress=False, augmentation=False, threads=1
    )
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    with pytest.raises(ValueError, match="recipe"):
        train(model, "rmsprop", epochs=1, root=tmp_path, progress=False)


def test_dead_channel_stats_finds_a_dead_channel():
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", width=0.5).eval()
    bn = model.features[3].body[4]  # BN after the depthwise conv of an expanded block
    bn.running_var[5] = 0.0
    bn.running_mean[6] = 0.0
    bn.bias.data[6] = -100.0  # channel 6: always negative -> ReLU6 output always 0
    stats = dead_channel_stats(model, torch.randn(8, 1, 28, 28))
    layer = next(l for l in stats["layers"] if l["bn"] == "features.3.body.4")
    assert layer["kind"] == "dw" and layer["dead_var"] == 1 and layer["dead_act"] >= 1 and layer["dead"] >= 2
    assert layer["max_fold"] > 300  # 1 / sqrt(1e-5)
    assert layer["range_ratio"] > 50 and layer["widest_channel_dead"]
    assert stats["summary"]["max_range_ratio_dw"] >= layer["range_ratio"]
    assert stats["summary"]["dead_var"] == 1
    json.dumps(stats)
    assert len(stats["layers"]) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


# ------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", width=0.5)
    model.features[1].depthwise[1].running_var.fill_(2.0)
    meta = {
        "model": "mobilenet_v1",
        "width": "0.5",
        "recipe": "sgd",
        "epochs": 5,
        "seed": 0,
        "test_accuracy": "0.9",
        "dead_channel_stats": {"summary": {"dead": 0}},
    }
    path = save_checkpoint(model, tmp_path / "m.safetensors", meta)
    loaded, got = load_checkpoint(path)
    assert not loaded.training
    assert got["width"] == 0.5 and got["epochs"] == 5 and got["dead_channel_stats"]["summary"]["dead"] == 0
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))

    with pytest.raises(CheckpointNotFoundError, match="available") as info:
        load_checkpoint("mobilenet_v9_w0.5_sgd")
    assert isinstance(info.value, FileNotFoundError)
    for name in list_checkpoints():
        assert name in str(info.value)

    wrong = save_checkpoint(model, tmp_path / "wrong.safetensors", {**meta, "model": "mobilenet_v2"})
    with pytest.raises(CheckpointMismatchError, match="do not match mobilenet_v2"):
        load_checkpoint(wrong)
    narrow = save_checkpoint(model, tmp_path / "narrow.safetensors", {**meta, "width": "0.25"})
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_checkpoint(narrow)
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="metadata lacks model"):
        load_checkpoint(tmp_path / "bare.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{not json")
    with pytest.raises(CheckpointMismatchError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")
    assert list_checkpoints(tmp_path) == ["bare", "junk", "m", "narrow", "wrong"]


@pytest.mark.skipif(not list_checkpoints(), reason="no shipped checkpoints")
@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("name", list_checkpoints())
def test_shipped_checkpoint(name, monkeypatch):
    monkeypatch.delenv("NPUQ_FASHION_MNIST", raising=False)
    model, meta = load_checkpoint(name)
    for key in (
        "model",
        "width",
        "recipe",
        "epochs",
        "seed",
        "test_accuracy",
        "command",
        "torch_version",
        "threads",
        "dead_channel_stats",
    ):
        assert key in meta, key
    x, y = fashion_mnist_tensors("test")
    with torch.no_grad():  # 500 images: enough to catch broken weights or BN statistics
        acc = (model(x[:500]).argmax(1) == y[:500]).float().mean().item()
    assert acc > meta["test_accuracy"] - 0.04
