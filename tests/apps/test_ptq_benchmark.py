"""The PTQ benchmark and the quantize command run end to end on a shipped checkpoint (small slices of the
test set, so that this stays fast; the full run is `npuq ptq-bench`)."""

from __future__ import annotations

import json

import pytest
import torch

from npuq.apps.ptq_benchmark import BenchConfig, run_benchmark, summarize, worst_depthwise_layer
from npuq.cli import main
from npuq.models.checkpoints import list_checkpoints, load_checkpoint
from npuq.quant import prepare, quantize
from support import ROOT


def test_shipped_checkpoints_cover_both_models_and_recipes():
    names = set(list_checkpoints())
    for arch in ("mobilenet_v1", "mobilenet_v2"):
        for recipe in ("sgd", "adam-l2"):
            assert f"{arch}_w0.5_{recipe}" in names


def test_benchmark_small_run_writes_tables_json_and_plots(tmp_path):
    cfg = BenchConfig(
        checkpoints=("mobilenet_v2_w0.5_adam-l2",),
        methods=("per_layer", "per_channel", "wess"),
        bits=(8, 4),
        test_limit=300,
        calib_batches=1,
        calib_batch_size=64,
    )
    results = run_benchmark(cfg, tmp_path, progress=False)
    for name in ("results.json", "results.md", "accuracy_vs_bits.png", "channel_ranges.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    entry = data["models"]["mobilenet_v2_w0.5_adam-l2"]
    assert data["test_images"] == 300
    assert len(entry["results"]) == 3 * 2 * 2
    assert all(r["accuracy"] is not None for r in entry["results"])
    assert 0.5 < entry["fp32"] <= 1.0
    # the channel-killing recipe leaves depthwise layers whose channel ranges differ by more than 2^4
    assert entry["ranges"]["layers_over_2_4"] > 0
    assert entry["dead_channels"]["dead"] > 0 and entry["dead_channels"]["layers_with_dead"] > 0
    assert len(entry["worst_depthwise"]["shifts"]) == len(entry["worst_depthwise"]["ranges"])
    summary = results["summary"]["mobilenet_v2_w0.5_adam-l2"]
    assert set(summary) == {"weight_only_w8", "weight_only_w4", "w_a8_w8", "w_a8_w4"}
    md = (tmp_path / "results.md").read_text()
    assert "| WESS |" in md and "W4" in md and "Dead channels" in md


def test_benchmark_config_is_validated():
    with pytest.raises(ValueError, match="unknown method"):
        BenchConfig(methods=("per_tensor",)).validate()
    with pytest.raises(ValueError, match="bits must be ints in \\[2, 8\\]"):
        BenchConfig(bits=(9,)).validate()
    with pytest.raises(ValueError, match="not found; available"):
        BenchConfig(checkpoints=("resnet_9000",)).validate()


def test_summary_reports_the_recovered_gap():
    results = {
        "models": {
            "m": {
                "fp32": 0.9,
                "results": [
                    dict(mode="w_a8", bits=4, method="per_layer", accuracy=0.5),
                    dict(mode="w_a8", bits=4, method="per_channel", accuracy=0.88),
                    dict(mode="w_a8", bits=4, method="wess", accuracy=0.8),
                ],
            }
        }
    }
    s = summarize(results)["m"]["w_a8_w4"]
    assert s["gap_recovered"] == pytest.approx((0.8 - 0.5) / (0.88 - 0.5))
    assert s["wess_minus_per_channel_points"] == pytest.approx(-8.0)


def test_worst_depthwise_layer_of_the_dead_channel_model():
    model, _ = load_checkpoint("mobilenet_v2_w0.5_adam-l2")
    graph = prepare(model, torch.zeros(2, 1, 28, 28))
    node, ratio = worst_depthwise_layer(graph)
    assert node.is_depthwise and ratio > 16


def test_quantize_command(tmp_path, capsys):
    rc = main(
        [
            "quantize",
            "--model",
            "mobilenet_v1_w0.5_sgd",
            "--weights",
            "wess",
            "--bits",
            "6",
            "--calib-batches",
            "1",
            "--batch-size",
            "32",
            "--limit",
            "200",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "FP32" in out and "wess W6A8" in out
    acc = json.loads((tmp_path / "accuracy.json").read_text())
    assert acc["config"]["bits"] == 6 and 0.5 < acc["quantized"] <= 1.0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["layers"] and report["activations"]


def test_quantize_command_rejects_unknown_checkpoint(capsys):
    assert main(["quantize", "--model", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npuq quantize: ") and "no_such_model" in err and "mobilenet_v1_w0.5_sgd" in err


def test_wess_matches_per_channel_at_8_bits_on_a_shipped_model():
    """A quick version of the benchmark's headline claim, on 1000 test images."""
    from npuq.data.fashion_mnist import fashion_mnist_loader
    from npuq.quant.api import evaluate

    model, _ = load_checkpoint("mobilenet_v2_w0.5_adam-l2")
    calib = list(fashion_mnist_loader("train", batch_size=128, shuffle=True, seed=1234, limit=256))
    test = list(fashion_mnist_loader("test", batch_size=500, limit=1000))
    graph = prepare(model, calib[0][0])
    fp32 = evaluate(graph.run_float, test)
    accs = {}
    for w in ("per_channel", "wess"):
        q = quantize(graph, calib, weights=w, bits=8, activations="mse", calib_batches=None)
        q.backend = "native"
        accs[w] = evaluate(q, test)
    assert abs(accs["wess"] - accs["per_channel"]) <= 0.01
    assert accs["wess"] >= fp32 - 0.01


def test_shipped_configs_are_valid_and_the_full_one_matches_the_defaults():
    import tomllib

    root = ROOT / "configs"
    from npuq.apps.ptq_imagenet import ImageNetBenchConfig

    for path in sorted(root.glob("ptq*.toml")):
        fields = tomllib.loads(path.read_text())
        kind = ImageNetBenchConfig if fields.get("task") == "imagenet" else BenchConfig  # the real-model section
        cfg = kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        cfg.validate()
    full = tomllib.loads((root / "ptq.toml").read_text())
    default = BenchConfig()
    for key, value in full.items():
        assert getattr(default, key) == (tuple(value) if isinstance(value, list) else value), key


def test_ptq_bench_command_with_config_and_overrides(tmp_path, capsys):

    config = ROOT / "configs" / "ptq_quick.toml"
    rc = main(
        [
            "ptq-bench",
            "--config",
            str(config),
            "--out",
            str(tmp_path),
            "--limit",
            "200",
            "--methods",
            "per_layer",
            "wess",
            "--bits",
            "8",
            "--modes",
            "w_a8",
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["test_images"] == 200
    rows = data["models"]["mobilenet_v2_w0.5_adam-l2"]["results"]
    assert [(r["method"], r["bits"], r["mode"]) for r in rows] == [("per_layer", 8, "w_a8"), ("wess", 8, "w_a8")]
    bad = tmp_path / "bad.toml"
    bad.write_text('methodz = ["wess"]\n')
    capsys.readouterr()
    assert main(["ptq-bench", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "unknown field" in capsys.readouterr().err


def test_benchmark_worker_processes_give_the_same_numbers(tmp_path):
    cfg = BenchConfig(
        checkpoints=("mobilenet_v1_w0.5_sgd", "mobilenet_v2_w0.5_sgd"),
        methods=("wess",),
        bits=(6,),
        modes=("w_a8",),
        test_limit=200,
        calib_batches=1,
        calib_batch_size=32,
    )
    parallel = run_benchmark(cfg, tmp_path / "p", progress=False, workers=2)
    serial = run_benchmark(cfg, tmp_path / "s", progress=False, workers=1)
    assert parallel["workers"] == 2 and serial["workers"] == 1
    for name in cfg.checkpoints:
        assert parallel["models"][name]["results"][0]["accuracy"] == serial["models"][name]["results"][0]["accuracy"]
        assert parallel["models"][name]["fp32"] == serial["models"][name]["fp32"]
