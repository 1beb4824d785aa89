"""The NPU cost model (npuq.npu.cost): MACs, bytes, liveness, cycles, report output and the CLI.

Hand-built programs have costs worked out below from the formulas of docs/cost_model.md; a compiled
MobileNetV2 is checked against the float model's MAC count and the requantization memory of WESS vs
per-channel quantization.
"""

import json
import math

import numpy as np
import pytest

from npuq.npu.cost import NPUConfig, activation_liveness, estimate_cost
from npuq.npu.program import Op, Program, load_program
from support.program_builders import add_op, build_program, conv_op, fc_op, max_pool_op


# ====================================================================================== program builders
def conv(name, src, c_in, c_out, k=1, stride=1, groups=1, bits=8, per_channel=False, shifts=None) -> Op:
    """A square-kernel conv with "same" padding."""
    p = k // 2
    return conv_op(
        name,
        src,
        (c_out, k, k, c_in // groups),
        stride=(stride, stride),
        padding=(p, p, p, p),
        groups=groups,
        bits=bits,
        per_channel=per_channel,
        shifts=shifts,
    )


def max_pool(name, src, k=2, stride=2) -> Op:
    return max_pool_op(name, src, (k, k), (stride, stride))


def program(shape, *ops, output=None) -> Program:
    return build_program(shape, *ops, output=output)  # validated: the builders must make valid programs


fc, add = fc_op, add_op

# big buffer and bandwidth unless a test is about them: compute-bound, activations on chip
FAST = dict(bandwidth_gbps=1000.0, buffer_bytes=1 << 24)


# ====================================================================================== configuration
def test_config_defaults_and_bytes_per_cycle():
    c = NPUConfig()
    assert (c.rows, c.cols, c.clock_mhz, c.bandwidth_gbps, c.batch) == (16, 16, 500.0, 4.0, 1)
    assert c.bytes_per_cycle == pytest.approx(8.0)  # 4e9 B/s / 500e6 cycles/s
    assert NPUConfig(bandwidth_gbps=1.0, clock_mhz=1000).bytes_per_cycle == pytest.approx(1.0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("rows", 0),
        ("cols", -4),
        ("rows", 2.5),
        ("cols", True),
        ("batch", 0),
        ("batch", "8"),
        ("buffer_bytes", -1),
        ("clock_mhz", 0),
        ("clock_mhz", -100.0),
        ("bandwidth_gbps", float("nan")),
        ("bandwidth_gbps", float("inf")),
        ("clock_mhz", "fast"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        NPUConfig(**{field: value})


def test_estimate_cost_rejects_wrong_types():
    p = program((4, 4, 8), conv("c", "x", 8, 8))
    with pytest.raises(TypeError, match="Program"):
        estimate_cost("model.npuq")
    with pytest.raises(TypeError, match="NPUConfig"):
        estimate_cost(p, {"rows": 8})


# ====================================================================================== counts and bytes
def test_conv_macs_bytes_and_cycles_by_hand():
    # 8x8x4 input, 3x3 conv (padding 1) to 32 channels, 4-bit weights, per-layer requantization
    p = program((8, 8, 4), conv("c", "x", 4, 32, k=3, bits=4))
    r = estimate_cost(p, NPUConfig(rows=16, cols=16, **FAST))
    o = r.ops[0]
    assert o.output_shape == (8, 8, 32)
    assert o.macs == 8 * 8 * 32 * (3 * 3 * 4)
    assert o.weight_bytes == 32 * 3 * 3 * 4 * 4 // 8  # packed 4-bit weights
    assert o.bias_bytes == 32 * 4
    assert o.requant_scheme == "per_layer"
    assert o.requant_bytes == 4 + 1 + 32 // 2  # M0, exponent, 4 bits per channel
    assert o.per_channel_requant_bytes == 32 * (4 + 1)
    assert (o.input_bytes, o.output_bytes) == (8 * 8 * 4, 8 * 8 * 32)
    # 32 channels over 16 columns, 36 taps over 16 rows, 64 output pixels
    assert o.compute_cycles == 2 * 3 * 64
    assert o.bound == "compute" and o.cycles == o.compute_cycles
    assert o.utilization == pytest.approx(o.macs / (o.cycles * 256))
    assert o.utilization == pytest.approx((32 * 36) / (2 * 16 * 3 * 16))


def test_odd_channel_count_rounds_packed_bytes_up():
    p = program((4, 4, 3), conv("c", "x", 3, 5, k=1, bits=3))
    o = estimate_cost(p).ops[0]
    assert o.weight_bytes == math.ceil(5 * 3 * 3 / 8)  # 45 bits -> 6 bytes
    assert o.requant_bytes == 5 + 3  # five 4-bit shifts -> 3 bytes


def test_per_channel_layer_stores_a_multiplier_per_channel():
    p = program((4, 4, 8), conv("c", "x", 8, 24, per_channel=True))
    o = estimate_cost(p).ops[0]
    assert o.requant_scheme == "per_channel"
    assert o.requant_bytes == o.per_channel_requant_bytes == 24 * 5


def test_wess_shifts_do_not_change_the_parameter_bytes():
    plain = program((4, 4, 8), conv("c", "x", 8, 16))
    wess = program((4, 4, 8), conv("c", "x", 8, 16, shifts=np.arange(16) % 16))
    assert estimate_cost(plain).ops[0].requant_bytes == estimate_cost(wess).ops[0].requant_bytes == 5 + 8


def test_depthwise_maps_taps_to_rows_and_shows_low_utilization():
    p = program((6, 6, 32), conv("dw", "x", 32, 32, k=3, groups=32))
    o = estimate_cost(p, NPUConfig(**FAST)).ops[0]
    assert o.macs == 6 * 6 * 32 * 9
    assert o.compute_cycles == math.ceil(32 / 16) * math.ceil(9 / 16) * 36
    assert o.utilization == pytest.approx(9 / 16)


def test_fully_connected_counts_o_times_k():
    p = program((100,), fc("fc", "x", 100, 10))
    o = estimate_cost(p, NPUConfig(**FAST)).ops[0]
    assert o.macs == 1000
    assert o.compute_cycles == 1 * math.ceil(100 / 16)
    assert o.weight_bytes == 1000


def test_elementwise_ops_run_on_the_vector_unit_not_the_mac_array():
    p = program((8, 8, 16), conv("c", "x", 16, 16), add("a", "x", "c"), max_pool("mp", "a"))
    r = estimate_cost(p, NPUConfig(cols=16, **FAST))
    a, mp = r.ops[1], r.ops[2]
    assert a.macs == mp.macs == 0
    assert a.vector_ops == 8 * 8 * 16
    assert a.compute_cycles == 8 * 8 * 16 // 16
    assert a.input_bytes == 2 * 8 * 8 * 16
    assert mp.output_shape == (4, 4, 16)
    assert mp.vector_ops == 4 * 4 * 16 * 4  # four taps per output element
    assert mp.compute_cycles == 4 * 4 * 16 * 4 // 16
    assert r.macs == 8 * 8 * 16 * 16
    assert r.vector_ops == a.vector_ops + mp.vector_ops


# ====================================================================================== liveness
def _residual_program():
    # x -> expand (4x) -> project -> add(x, project): x must stay alive across the branch
    return program(
        (8, 8, 16), conv("expand", "x", 16, 64), conv("project", "expand", 64, 16), add("sum", "x", "project")
    )


def test_peak_activation_keeps_the_skip_tensor_alive():
    p = _residual_program()
    live, peak, where = activation_liveness(p)
    x, e = 8 * 8 * 16, 8 * 8 * 64
    assert live == [x + e, x + e + x, x + x + x]
    assert (peak, where) == (x + e + x, "project")
    r = estimate_cost(p)
    assert r.peak_activation_bytes == peak and r.peak_op == "project"
    assert [o.live_activation_bytes for o in r.ops] == live


def test_a_value_is_freed_after_its_last_reader():
    # a chain: each op needs only its input and output
    p = program((8, 8, 8), conv("a", "x", 8, 32), conv("b", "a", 32, 8), conv("c", "b", 8, 8))
    live, peak, where = activation_liveness(p)
    assert live == [512 + 2048, 2048 + 512, 512 + 512]
    assert (peak, where) == (2560, "a")


def test_flatten_is_a_free_view():
    pool = Op(name="gap", kind="global_avg_pool", inputs=["c"], attrs=dict(act_min=-128, act_max=127), scale=0.1)
    flat = Op(name="flat", kind="flatten", inputs=["gap"], scale=0.1)
    p = program((4, 4, 8), conv("c", "x", 8, 32), pool, flat, fc("fc", "flat", 32, 10))
    r = estimate_cost(p, NPUConfig(buffer_bytes=0))
    f = r.ops[2]
    assert (f.cycles, f.offchip_bytes, f.bound, f.utilization) == (0, 0, "none", None)
    assert r.ops[1].vector_ops == 4 * 4 * 32
    live, _, _ = activation_liveness(p)
    assert live[2] == 32  # the pooled vector, counted once
    assert live[3] == 32 + 10


def test_a_flatten_of_the_network_input_leaves_the_read_to_its_consumer():
    flat = Op(name="flat", kind="flatten", inputs=["x"], scale=0.5)
    p = program((2, 2, 3), flat, fc("fc", "flat", 12, 4))
    r = estimate_cost(p, NPUConfig())
    assert r.ops[0].offchip_bytes == 0
    assert r.ops[1].offchip_bytes == (4 * 12 + 4 * 4 + 5 + 2) + 12 + 4


def test_a_program_without_work_has_no_throughput():
    p = program((2, 2, 3), Op(name="flat", kind="flatten", inputs=["x"], scale=0.5))
    r = estimate_cost(p)
    assert (r.cycles, r.latency_ms, r.images_per_s) == (0, 0.0, None)
    assert json.loads(json.dumps(r.to_dict(), allow_nan=False))["totals"]["images_per_s"] is None
    assert "- images/s" in r.to_table()


# ====================================================================================== cycles and memory
def test_doubling_columns_halves_a_wide_pointwise_layer():
    p = program((4, 4, 64), conv("pw", "x", 64, 256))
    narrow = estimate_cost(p, NPUConfig(cols=16, **FAST)).ops[0]
    wide = estimate_cost(p, NPUConfig(cols=32, **FAST)).ops[0]
    assert narrow.compute_cycles == 16 * 4 * 16
    assert wide.compute_cycles * 2 == narrow.compute_cycles
    assert wide.utilization == pytest.approx(narrow.utilization) == pytest.approx(1.0)


def test_tiny_bandwidth_makes_a_layer_memory_bound():
    p = program((4, 4, 64), conv("pw", "x", 64, 256))
    cfg = NPUConfig(bandwidth_gbps=0.001, clock_mhz=500)  # 0.002 bytes per cycle
    o = estimate_cost(p, cfg).ops[0]
    params = 256 * 64 + 256 * 4 + 5 + 128
    acts = 4 * 4 * 64 + 4 * 4 * 256  # network input read, network output written
    assert o.offchip_bytes == params + acts
    assert o.memory_cycles == math.ceil((params + acts) / 0.002)
    assert o.bound == "memory" and o.cycles == o.memory_cycles
    assert o.utilization == pytest.approx(o.macs / (o.cycles * 256))
    assert estimate_cost(p, NPUConfig(**FAST)).ops[0].bound == "compute"


def test_activations_spill_off_chip_when_the_buffer_is_too_small():
    p = _residual_program()
    on = estimate_cost(p, NPUConfig(buffer_bytes=1 << 20))
    off = estimate_cost(p, NPUConfig(buffer_bytes=1024))
    assert on.activations_on_chip and not off.activations_on_chip
    assert off.notes and "off-chip" in off.notes[0]
    x, e = 8 * 8 * 16, 8 * 8 * 64
    params = [64 * 16 + 64 * 4 + 5 + 32, 16 * 64 + 16 * 4 + 5 + 8, 0]
    assert [o.offchip_bytes for o in off.ops] == [params[0] + x + e, params[1] + e + x, 3 * x]
    assert [o.offchip_bytes for o in on.ops] == [params[0] + x, params[1], x]


def test_batch_reuses_weights_and_scales_work():
    p = program((4, 4, 64), conv("pw", "x", 64, 256))
    one = estimate_cost(p, NPUConfig(batch=1)).ops[0]
    eight = estimate_cost(p, NPUConfig(batch=8)).ops[0]
    params = one.weight_bytes + one.bias_bytes + one.requant_bytes
    assert eight.compute_cycles == 8 * one.compute_cycles
    assert eight.offchip_bytes - params == 8 * (one.offchip_bytes - params)
    assert eight.macs == one.macs  # per image


def test_totals_latency_and_throughput():
    p = _residual_program()
    cfg = NPUConfig(clock_mhz=250, batch=4)
    r = estimate_cost(p, cfg)
    assert r.cycles == sum(max(o.compute_cycles, o.memory_cycles) for o in r.ops)
    assert r.macs == sum(o.macs for o in r.ops) == 8 * 8 * 16 * 64 * 2
    assert r.latency_ms == pytest.approx(r.cycles / 250e3)
    assert r.images_per_s == pytest.approx(4 / (r.cycles / 250e6))
    assert r.utilization == pytest.approx(4 * r.macs / (r.cycles * 256))
    t = r.totals()
    assert t["requant_bytes"] == (5 + 32) + (5 + 8)
    assert t["per_channel_requant_bytes"] == 5 * 64 + 5 * 16


# ====================================================================================== report output
def test_report_dict_json_and_table(tmp_path):
    r = estimate_cost(_residual_program())
    d = json.loads(json.dumps(r.to_dict()))
    assert [o["name"] for o in d["ops"]] == ["expand", "project", "sum"]
    assert d["ops"][0]["output_shape"] == [8, 8, 64]
    assert d["totals"]["peak_op"] == "project" and d["config"]["rows"] == 16
    path = r.save_json(tmp_path / "cost.json")
    assert json.loads(path.read_text())["totals"]["cycles"] == r.cycles
    table = r.to_table()
    for text in ("expand", "project", "sum", "peak activation memory", "images/s", "per-channel", "bound"):
        assert text in table
    assert f"{r.peak_activation_bytes:,} B per image at 'project'" in table


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = estimate_cost(_residual_program()).plot(tmp_path / "cycles.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ====================================================================================== command line
def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    from npuq.cli import main

    p = _residual_program()
    path = p.save(tmp_path / "res.npuq")
    out = tmp_path / "cost.json"
    rc = main(
        [
            "cost",
            str(path),
            "--rows",
            "8",
            "--cols",
            "32",
            "--clock-mhz",
            "800",
            "--bandwidth-gbps",
            "2",
            "--batch",
            "2",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "8x32 MAC array at 800 MHz" in text and "project" in text
    saved = json.loads(out.read_text())
    expected = estimate_cost(load_program(path), NPUConfig(rows=8, cols=32, clock_mhz=800, bandwidth_gbps=2, batch=2))
    assert saved["totals"]["cycles"] == expected.cycles
    assert saved["config"]["batch"] == 2


def test_cli_bad_program_and_bad_config_exit_2(tmp_path, capsys):
    from npuq.cli import main

    bad = tmp_path / "bad.npuq"
    bad.write_bytes(b"not a program")
    assert main(["cost", str(bad)]) == 2
    assert "bad.npuq" in capsys.readouterr().err
    assert main(["cost", str(tmp_path / "missing.npuq")]) == 2
    good = _residual_program().save(tmp_path / "res.npuq")
    with pytest.raises(SystemExit) as info:  # argparse checks the range and shows it
        main(["cost", str(good), "--cols", "0"])
    assert info.value.code == 2
    assert "--cols" in capsys.readouterr().err


# ====================================================================================== compiled MobileNetV2
@pytest.fixture(scope="module")
def mobilenet_programs():
    torch = pytest.importorskip("torch")
    import npuq
    from npuq.data.fashion_mnist import fashion_mnist_loader
    from npuq.models.checkpoints import load_checkpoint

    torch.manual_seed(0)
    try:
        model, _ = load_checkpoint("mobilenet_v2_w0.5_sgd")
        # one calibration batch: the counts checked here do not depend on the activation scales
        calib = fashion_mnist_loader("train", batch_size=256, shuffle=True, seed=1234, limit=256)
    except (FileNotFoundError, OSError) as exc:  # no Fashion-MNIST files on this machine
        pytest.skip(f"Fashion-MNIST or the checkpoint is not available: {exc}")
    progs = {
        w: npuq.compile(npuq.quantize(model, calib, weights=w, bits=8, activations="mse"))
        for w in ("wess", "per_channel")
    }
    return model, progs


def test_mobilenet_macs_equal_the_float_model_count(mobilenet_programs):
    from npuq.models.mobilenet import count_macs

    model, progs = mobilenet_programs
    total, rows = count_macs(model, per_layer=True)
    r = estimate_cost(progs["wess"])
    assert r.macs == total
    layer_macs = sorted(o.macs for o in r.ops if o.unit == "mac_array")
    assert layer_macs == sorted(row[-1] for row in rows)


def test_mobilenet_wess_vs_per_channel_requant_bytes(mobilenet_programs):
    _, progs = mobilenet_programs
    wess, pc = estimate_cost(progs["wess"]), estimate_cost(progs["per_channel"])
    channels = [int(o.tensors["weight"].shape[0]) for o in progs["wess"].layers()]
    assert wess.requant_bytes == sum(5 + math.ceil(c / 2) for c in channels)
    assert pc.requant_bytes == sum(5 * c for c in channels)
    assert wess.per_channel_requant_bytes == pc.requant_bytes
    assert wess.requant_bytes * 5 < pc.requant_bytes
    # everything else is the same network
    assert (wess.macs, wess.weight_bytes, wess.peak_activation_bytes) == (
        pc.macs,
        pc.weight_bytes,
        pc.peak_activation_bytes,
    )


def test_mobilenet_peak_is_at_least_every_residual_working_set(mobilenet_programs):
    _, progs = mobilenet_programs
    p = progs["wess"]
    shapes = p.shapes()
    r = estimate_cost(p)
    index = {op.name: i for i, op in enumerate(p.ops)}
    for op in p.ops:
        if op.kind == "add":
            skip, body = op.inputs
            # while the body's last conv runs, the skip input is alive next to the conv's input and output
            body_op = p.op(body)
            need = sum(math.prod(shapes[v]) for v in {skip, body_op.inputs[0], body})
            assert r.ops[index[body]].live_activation_bytes >= need
    assert r.peak_activation_bytes == max(o.live_activation_bytes for o in r.ops)
