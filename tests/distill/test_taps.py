"""Module taps (`npuq.distill.taps`): dotted-path lookup with close-name suggestions, forward-hook
recording on unmodified models (torchvision's ResNet-18 and MobileNetV2 included), gradients through the
records, per-pass bookkeeping (branches not taken, shared modules), hook removal, and a hint loss between
taps of two different models that trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from npuq.distill.losses import HintLoss
from npuq.distill.taps import FeatureTaps, TapError, get_module, model_outputs
from support.torchvision_compat import torchvision_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small models: see conftest.py


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision_models().resnet18(num_classes=10)


@pytest.fixture(scope="module")
def mobilenet_v2():
    torch.manual_seed(1)
    return torchvision_models().mobilenet_v2(num_classes=10)


def images(n: int = 2, size: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------------ get_module


def test_get_module_resolves_dotted_paths_of_torchvision_models(resnet18, mobilenet_v2):
    assert get_module(resnet18, "layer2.0") is resnet18.layer2[0]
    assert get_module(resnet18, "layer3.1.bn2") is resnet18.layer3[1].bn2
    assert get_module(mobilenet_v2, "features.3.conv.1") is mobilenet_v2.features[3].conv[1]
    assert get_module(mobilenet_v2, "") is mobilenet_v2
    names = dict(mobilenet_v2.named_modules())
    assert all(get_module(mobilenet_v2, name) is module for name, module in names.items())


@pytest.mark.parametrize(
    "path,close",
    [("layer2.5", "layer2.0"), ("layer5.0", "layer4.0"), ("layr2.0.conv1", "layer2.0.conv1"), ("fc1", "fc")],
)
def test_get_module_wrong_path_lists_close_names(resnet18, path, close):
    with pytest.raises(TapError) as info:
        get_module(resnet18, path)
    message = str(info.value)
    assert repr(path) in message and repr(close) in message
    assert "[n for n, _ in model.named_modules()]" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_get_module_wrong_path_on_mobilenet(mobilenet_v2):
    with pytest.raises(TapError, match=r"'features\.3\.conv\.1'"):
        get_module(mobilenet_v2, "feature.3.conv.1")


def test_get_module_rejects_non_string_paths(resnet18):
    with pytest.raises(TypeError, match="path"):
        get_module(resnet18, 3)
    with pytest.raises(TypeError, match="model"):
        get_module("resnet", "layer1")


# ----------------------------------------------------------------------------------------- FeatureTaps


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_taps_on_resnet18_record_the_block_outputs(resnet18, train):
    model = resnet18.train(train)
    x = images()
    with FeatureTaps(model, ["layer1", "layer2.0", "layer3"]) as taps:
        logits = model(x)
        recorded = taps.outputs()
    # the same tensors, computed by calling the sub-modules by hand (BN in train mode uses the batch's
    # statistics, so a second pass gives the same outputs)
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        layer1 = model.layer1(stem)
        layer2_0 = model.layer2[0](layer1)
        layer3 = model.layer3(model.layer2[1](layer2_0))
    assert list(recorded) == ["layer1", "layer2.0", "layer3"]
    for got, expected in zip(recorded.values(), (layer1, layer2_0, layer3)):
        assert got.shape == expected.shape
        torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 10)
    model.eval()


def test_taps_keep_the_graph_so_a_student_loss_backpropagates(resnet18):
    resnet18.zero_grad()
    with FeatureTaps(resnet18, "layer2") as taps:
        resnet18(images())
        feature = taps["layer2"]
    assert feature.requires_grad
    feature.pow(2).mean().backward()
    assert resnet18.layer1[0].conv1.weight.grad is not None  # upstream of the tap
    assert resnet18.layer4[0].conv1.weight.grad is None  # downstream: no part in the loss
    resnet18.zero_grad()


def test_taps_of_a_no_grad_teacher_and_detach_carry_no_graph(resnet18):
    with FeatureTaps(resnet18, ["layer1"]) as taps, torch.no_grad():
        resnet18(images())
        assert not taps["layer1"].requires_grad
    with FeatureTaps(resnet18, ["layer1"], detach=True) as taps:
        resnet18(images())
        assert not taps["layer1"].requires_grad


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_taps_on_mobilenet_v2_inside_an_inverted_residual(mobilenet_v2, train):
    model = mobilenet_v2.train(train)
    x = images(seed=3)
    output, recorded = model_outputs(model, x, ["features.3.conv.1", "features.17"])
    with torch.no_grad():
        before = model.features[:3](x)
        depthwise = model.features[3].conv[1](model.features[3].conv[0](before))
    torch.testing.assert_close(recorded["features.3.conv.1"].detach(), depthwise, rtol=1e-5, atol=1e-5)
    assert recorded["features.17"].shape == (2, 320, 1, 1)
    assert output.shape == (2, 10)
    assert hooks_left(model) == 0  # model_outputs removes its hooks
    model.eval()


class Branchy(nn.Module):
    """A tuple-returning LSTM, a shared activation called twice, and a branch taken on request."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.act = nn.Tanh()
        self.first = nn.Linear(4, 4)
        self.extra = nn.Linear(4, 4)
        self.use_extra = False

    def forward(self, x):
        seq, _ = self.lstm(x)
        h = self.act(self.first(self.act(seq[:, -1])))
        if self.use_extra:
            h = self.extra(h)
        return h


def test_tuple_outputs_record_their_first_tensor():
    model = Branchy()
    x = torch.randn(2, 5, 3)
    with FeatureTaps(model, "lstm") as taps:
        model(x)
        expected, _ = model.lstm(x)
        assert taps["lstm"].shape == (2, 5, 4)
        torch.testing.assert_close(taps["lstm"], expected)


def test_a_module_called_twice_records_its_last_call():
    model = Branchy()
    x = torch.randn(2, 5, 3)
    with FeatureTaps(model, "act") as taps:
        output = model(x)
        assert taps.calls["act"] == 2
        torch.testing.assert_close(taps["act"], output)  # the second tanh is the model's output


def test_a_branch_not_taken_in_the_last_pass_raises():
    model = Branchy()
    x = torch.randn(2, 5, 3)
    with FeatureTaps(model, ["first", "extra"]) as taps:
        model.use_extra = True
        model(x)
        assert taps["extra"].shape == (2, 4)
        model.use_extra = False
        model(x)  # a new pass: the previous record of "extra" is gone
        assert taps["first"].shape == (2, 4)
        with pytest.raises(TapError, match="'extra' did not run in the last forward pass"):
            taps["extra"]
        with pytest.raises(TapError, match="did not run"):
            taps.outputs()
        assert "extra" not in taps and "first" in taps


def test_every_pass_replaces_the_record():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with FeatureTaps(model, "0") as taps:
        a, b = torch.randn(2, 3), torch.randn(2, 3)
        model(a)
        first = taps["0"]
        model(b)
        torch.testing.assert_close(taps["0"], model[0](b))
        assert not torch.equal(first, taps["0"])


def test_clear_remove_and_the_context_manager():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    taps = FeatureTaps(model, ["0", "1"])
    assert hooks_left(model) == 3  # one pre-hook on the model, one hook per tap
    model(torch.randn(2, 3))
    taps.clear()
    with pytest.raises(TapError, match="did not run"):
        taps["0"]
    model(torch.randn(2, 3))
    kept = taps["1"]
    taps.remove()
    taps.remove()  # idempotent
    assert hooks_left(model) == 0 and not taps.active
    model(torch.randn(2, 3))  # no longer recorded
    assert taps["1"] is kept
    with FeatureTaps(model, "1") as scoped:
        assert scoped.active
    assert hooks_left(model) == 0 and not scoped.active


def test_bad_paths_raise_before_any_hook_is_registered(resnet18):
    with pytest.raises(TapError, match="'layer2.0'"):
        FeatureTaps(resnet18, ["layer1", "layer2.7"])
    assert hooks_left(resnet18) == 0
    with pytest.raises(ValueError, match="empty"):
        FeatureTaps(resnet18, [])
    with pytest.raises(ValueError, match="more than once"):
        FeatureTaps(resnet18, ["layer1", "layer1"])
    with FeatureTaps(resnet18, ["layer1"]) as taps, pytest.raises(TapError, match="not tapped"):
        taps["layer2"]


def test_model_outputs_returns_the_output_and_the_taps():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 5, 5)
    output, taps = model_outputs(model, x, ["1", "3"])
    torch.testing.assert_close(output, model(x))
    torch.testing.assert_close(taps["3"], output)
    torch.testing.assert_close(taps["1"], torch.relu(model[0](x)))
    assert hooks_left(model) == 0


# ------------------------------------------------------------------------------- a hint between models


def small_student() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


class SmallTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(12, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


def test_a_hint_between_taps_of_two_different_models_trains():
    torch.manual_seed(5)
    student, teacher = small_student(), SmallTeacher().eval()
    x = torch.randn(8, 3, 16, 16)
    hint = HintLoss(student_channels=16, teacher_channels=24)  # student 16 x 8 x 8 -> teacher 24 x 4 x 4
    optimizer = torch.optim.SGD([*student.parameters(), *hint.parameters()], lr=0.05, momentum=0.9)
    with torch.no_grad():
        _, teacher_taps = model_outputs(teacher, x, ["stage"])
    losses = []
    with FeatureTaps(student, "3") as student_taps:
        for _ in range(25):
            student(x)
            loss = hint(student_taps["3"], teacher_taps["stage"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())
