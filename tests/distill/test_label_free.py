"""Label-free quantization-aware distillation (npuq.distill.label_free_qat): a fake-quantized student fitted
to its FP32 teacher's softened logits on unlabelled inputs, handed back as a graph npuq.quantize takes."""

import pytest
import torch
import torch.nn as nn

import npuq
from npuq.distill import label_free_qat
from npuq.distill.taps import TapError
from npuq.models.zoo import randomize_batch_norms
from npuq.quant import Graph, prepare

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, groups=c), nn.BatchNorm2d(c), nn.ReLU6(), nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)
        )

    def forward(self, x):
        return x + self.body(x)


class _Net(nn.Module):
    """A small MobileNet-like network: stem, a residual depthwise block, head, classifier."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = _Block(8)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.head(self.block(self.stem(x)))), 1))


def _teacher(classes=10):
    torch.manual_seed(0)
    return randomize_batch_norms(_Net(classes), 3).eval()


def _x(n=64, seed=1, size=16):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _setup():
    teacher, x = _teacher(), _x()
    return teacher, prepare(teacher, x[:2]), x


FAST = dict(epochs=2, lr=1e-2, batch_size=16, progress=False)


def _weights(graph: Graph) -> dict:
    return {n.name: (n.weight.clone(), n.bias.clone()) for n in graph.layers()}


def test_the_kd_loss_decreases_and_the_result_quantizes():
    teacher, graph, x = _setup()
    history = []
    trained = label_free_qat(
        teacher, graph, x, bits=3, epochs=6, lr=1e-2, batch_size=16, temperature=2.0, progress=False, history=history
    )
    steps = [h for h in history if "step" in h]
    epochs = [h for h in history if "step" not in h]
    assert len(steps) == 6 * (64 // 16) and len(epochs) == 6
    assert all(h["kd"] == pytest.approx(h["loss"]) for h in steps)  # no hints: the loss is the KD term
    assert epochs[-1]["mean_kd"] < 0.5 * epochs[0]["mean_kd"]
    assert steps[-1]["lr"] < steps[0]["lr"]  # cosine schedule
    # a graph with the same nodes and new weights, which npuq.quantize takes as it took the original
    assert isinstance(trained, Graph) and [n.name for n in trained] == [n.name for n in graph]
    assert any(not torch.equal(trained[n.name].weight, n.weight) for n in graph.layers())
    assert "label-free quantization-aware distillation: W3 wess" in trained.notes[-1]
    qm = npuq.quantize(trained, [x[:32]], weights="wess", bits=3, activations="mse")
    assert qm(x[:4]).shape == (4, 10)
    # and the fine-tuning brought the integer model closer to the teacher than post-training quantization
    ptq = npuq.quantize(graph, [x[:32]], weights="wess", bits=3, activations="mse")
    with torch.no_grad():
        ref = teacher(x)

        def kl(z):
            return nn.functional.kl_div(z.log_softmax(1), ref.log_softmax(1), reduction="batchmean", log_target=True)

        assert kl(qm(x)) < kl(ptq(x))


def test_the_teacher_and_the_student_graph_are_never_updated():
    teacher, graph, x = _setup()
    teacher.train()  # even in training mode: it must run in eval mode (batch-norm statistics untouched)
    flags = {n: p.requires_grad for n, p in teacher.named_parameters()}
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = _weights(graph)
    label_free_qat(teacher, graph, x, bits=4, hint_taps={"add": "block"}, **FAST)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in teacher.parameters())
    assert {n: p.requires_grad for n, p in teacher.named_parameters()} == flags
    assert teacher.training  # its mode is restored
    assert not teacher._forward_hooks and not teacher.block._forward_hooks  # taps removed
    assert all(torch.equal(graph[k].weight, w) and torch.equal(graph[k].bias, b) for k, (w, b) in before.items())


def test_deterministic_for_a_seed():
    teacher, graph, x = _setup()
    a = _weights(label_free_qat(teacher, graph, x, bits=4, seed=3, **FAST))
    b = _weights(label_free_qat(teacher, graph, x, bits=4, seed=3, **FAST))
    c = _weights(label_free_qat(teacher, graph, x, bits=4, seed=4, **FAST))
    assert all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)
    assert any(not torch.equal(a[k][0], c[k][0]) for k in a)  # another seed, another data order


def test_fresh_inputs_every_epoch_from_a_callable():
    teacher, graph, _ = _setup()
    calls = []

    def crops(epoch):
        calls.append(epoch)
        return _x(32, seed=10 + epoch)

    history = []
    label_free_qat(teacher, graph, crops, bits=6, epochs=3, lr=1e-3, batch_size=16, progress=False, history=history)
    assert calls == [0, 1, 2]
    assert sum("step" in h for h in history) == 3 * 2


def test_feature_hints_from_a_module_or_a_graph_teacher():
    teacher, graph, x = _setup()
    history = []
    label_free_qat(
        teacher,
        graph,
        x,
        bits=4,
        hint_taps={"add": "block", "head_0": "head"},
        hint_weight=0.5,
        history=history,
        **FAST,
    )
    step = history[0]
    assert {"kd", "hint add", "hint head_0", "loss"} <= set(step)
    assert step["loss"] == pytest.approx(step["kd"] + 0.5 * (step["hint add"] + step["hint head_0"]), rel=1e-5)
    # the FP32 graph as teacher: the same node names on both sides
    history = []
    label_free_qat(graph, graph, x, bits=4, hint_taps=["add"], history=history, **FAST)
    assert "hint add" in history[0]
    with pytest.raises(ValueError, match="not a node.*close: add"):
        label_free_qat(graph, graph, x, bits=4, hint_taps=["ad"], **FAST)
    with pytest.raises(ValueError, match="mapping"):
        label_free_qat(teacher, graph, x, bits=4, hint_taps=["add"], **FAST)
    with pytest.raises(TapError, match="close names"):
        label_free_qat(teacher, graph, x, bits=4, hint_taps={"add": "blok"}, **FAST)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(bits=1), ValueError, r"bits must be an int in \[2, 8\], got 1"),
        (dict(bits=9), ValueError, r"bits must be an int in \[2, 8\], got 9"),
        (dict(bits=4.0), TypeError, "bits must be an int"),
        (dict(bits=True), TypeError, "bits must be an int"),
        (dict(bits=4, method="wess_output"), ValueError, "method must be one of"),
        (dict(bits=4, method="nearest"), ValueError, "method must be one of"),
        (dict(bits=4, epochs=0), ValueError, "epochs must be an int >= 1"),
        (dict(bits=4, batch_size=0), ValueError, "batch_size must be an int >= 1"),
        (dict(bits=4, lr=0.0), ValueError, "lr must be a finite number > 0"),
        (dict(bits=4, lr=float("nan")), ValueError, "lr must be a finite number > 0"),
        (dict(bits=4, temperature=-1.0), ValueError, "temperature must be a finite number > 0"),
        (dict(bits=4, optimizer="lbfgs"), ValueError, "optimizer must be one of"),
        (dict(bits=4, hint_weight=-1.0), ValueError, "hint_weight must be a finite number >= 0"),
        (dict(bits=4, warmup_steps=-1), ValueError, "warmup_steps must be an int >= 0"),
        (dict(bits=4, shift_bits=5), ValueError, r"shift_bits must be an int in \[0, 4\]"),
        (dict(bits=4, hint_taps={}), ValueError, "hint_taps is empty"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, error, match):
    teacher, graph, x = _setup()
    with pytest.raises(error, match=match):
        label_free_qat(teacher, graph, x, progress=False, **kwargs)


@pytest.mark.parametrize(
    "data,match",
    [
        (torch.empty(0, 3, 16, 16), "empty"),
        (torch.randn(32, 3, 8, 8), r"shape \(32, 3, 8, 8\).*prepared for inputs of shape \(N, 3, 16, 16\)"),
        (torch.randn(32, 1, 16, 16), "prepared for inputs of shape"),
        (torch.randn(8, 3, 16, 16), "fewer than one batch of 16"),
        (torch.zeros(32, 3, 16, 16, dtype=torch.int64), "floating point"),
        (torch.full((32, 3, 16, 16), float("nan")), "NaN"),
        (lambda epoch: torch.randn(32, 3, 12, 12), r"data\(0\) returned.*prepared for inputs"),
    ],
)
def test_bad_data_is_a_clear_error(data, match):
    teacher, graph, _ = _setup()
    with pytest.raises(ValueError, match=match):
        label_free_qat(teacher, graph, data, bits=4, batch_size=16, progress=False)


def test_bad_models_are_clear_errors():
    teacher, graph, x = _setup()
    with pytest.raises(TypeError, match="student_graph must be a prepared npuq Graph"):
        label_free_qat(teacher, teacher, x, bits=4, progress=False)
    with pytest.raises(TypeError, match="teacher must be"):
        label_free_qat("fp32", graph, x, bits=4, progress=False)
    with pytest.raises(TypeError, match="data must be"):
        label_free_qat(teacher, graph, [x], bits=4, progress=False)
    with pytest.raises(ValueError, match="does not match the student's logits"):
        label_free_qat(_teacher(classes=5), graph, x, bits=4, progress=False)
    with pytest.raises(ValueError, match="teacher does not take"):
        label_free_qat(nn.Linear(7, 10), graph, x, bits=4, progress=False)
