"""The real-model section of the PTQ benchmark, run end to end on a tiny stand-in network and random
"photographs" (the pretrained model and its photos are exercised by the benchmark itself and by
tests/models/test_real_model.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from npuq.apps import ptq_imagenet as bench
from npuq.quant.graph import prepare


class _TinyNet(nn.Module):
    """Stem, a depthwise layer with one channel 10^9 below the others (dead after BN folding), classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, 2, bias=False), nn.BatchNorm2d(8), nn.ReLU6()
        )
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            for bn in (self.stem[2], self.dw[1], self.pw[1]):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.bias.uniform_(-0.5, 0.5)
            self.dw[1].weight[3] = 1e-9  # a dead channel: its output is its bias

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.pw(self.dw(self.stem(x)))), 1))


@pytest.fixture
def tiny_task(monkeypatch):
    torch.manual_seed(0)
    model = _TinyNet().eval()
    g = torch.Generator().manual_seed(1)
    calib = torch.rand(16, 3, 16, 16, generator=g) * 2 - 1
    evaluation = torch.rand(40, 3, 16, 16, generator=g) * 2 - 1
    monkeypatch.setattr(
        bench,
        "load_task",
        lambda cfg, progress=False: (model, list(torch.split(calib, cfg.calib_batch_size)), evaluation),
    )
    return model


def test_channel_statistics_count_what_a_shift_cannot_reach(tiny_task):
    graph = prepare(tiny_task, torch.rand(1, 3, 16, 16))
    stats = bench.channel_statistics(graph)
    dw = next(r for r in stats["layers"] if r["depthwise"])
    assert dw["beyond_shift_reach"] == 1 and dw["below_1e6"] == 1 and dw["range_ratio"] > 1e6
    assert stats["beyond_shift_reach"] >= 1 and stats["channels"] == 8 + 8 + 16 + 10


def test_benchmark_end_to_end_writes_tables_plots_and_the_npu_check(tiny_task, tmp_path):
    cfg = bench.ImageNetBenchConfig(
        methods=("per_layer", "per_channel", "wess", "wess_bc"),
        bits=(8, 4),
        calib_crops=16,
        calib_batch_size=8,
        eval_crops=40,
        eval_batch_size=16,
    )
    results = bench.run_benchmark(cfg, tmp_path, progress=False)
    assert len(results["results"]) == 2 * 2 * 4
    assert not [r for r in results["results"] if "error" in r]  # nothing crashes, dead channel included
    for r in results["results"]:
        assert 0.0 <= r["top1_agreement"] <= 1.0 and r["kl_mean"] >= 0.0 and r["n"] == 40
        lo, hi = r["top1_agreement_ci"]
        assert lo <= r["top1_agreement"] <= hi
    summary = results["summary"]["w_a8_w8"]
    assert summary["top1_agreement"]["verdict"] in ("WESS better", "per-channel better", "within the spread")
    assert summary["top1_agreement"]["best_per_channel"] == "per_channel"
    npu = results["npu"]
    assert npu["images_equal"] == npu["images"] == 40
    assert npu["equal_to_torch_arithmetic_on_first_64"] and npu["vectors_verified"]
    for name in (
        "results.json",
        "results.md",
        "fidelity_vs_bits.png",
        "channel_ranges.png",
        "efficientnet_lite0_w8a8.npuq",
        "vectors/manifest.json",
    ):
        assert (tmp_path / name).is_file(), name
    md = (tmp_path / "results.md").read_text()
    assert "Best WESS variant vs best per-channel variant" in md and "On the NPU path" in md
    assert json.loads((tmp_path / "results.json").read_text())["config"]["eval_crops"] == 40


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("methods", ("per_layer", "nope"), "unknown method"),
        ("bits", (9,), "bits"),
        ("modes", ("int4",), "modes"),
        ("eval_crops", 0, "eval_crops"),
        ("model", "resnet50", "efficientnet_lite0"),
        ("qat", "/no/such.json", "qat"),
    ],
)
def test_config_is_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        bench.ImageNetBenchConfig(**{field: value}).validate()


def test_cli_rejects_unknown_config_fields_in_one_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('task = "imagenet"\nevaluation_crops = 5\n')
    proc = subprocess.run(
        [sys.executable, "-m", "npuq.cli", "ptq-bench", "--config", str(cfg), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "unknown field(s) ['evaluation_crops']" in proc.stderr and "Traceback" not in proc.stderr
