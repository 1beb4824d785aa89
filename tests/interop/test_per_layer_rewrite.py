"""The per-layer (WESS) rewrite of an imported per-channel model: one multiplier per layer, 4-bit shifts,
WESS-exact layers untouched, and outputs close to the original's."""

from __future__ import annotations

import numpy as np

import npuq
from npuq.interop.per_layer import to_per_layer
from npuq.interop.tflite_import import import_tflite
from support.tflite_cases import mobilenet_v3_block, random_input


def test_every_layer_ends_per_layer_and_wess_layers_are_kept():
    rng = np.random.default_rng(11)
    model, shape = mobilenet_v3_block(rng)
    imported = import_tflite(model)
    rewritten, changed = to_per_layer(imported.program)
    layers = [op for op in rewritten.ops if op.kind in ("conv2d", "fully_connected")]
    assert all(op.tensors["multiplier"].shape == (1,) for op in layers)
    assert all(int(op.tensors["shift"].max()) <= 15 for op in layers)
    kept = {layer.name for layer in imported.report.layers if layer.weights != "per_channel"}
    assert kept and not kept & {c.name for c in changed}
    for name in kept:  # bit for bit
        a, b = imported.program.op(name), rewritten.op(name)
        assert all(np.array_equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert len(changed) == sum(1 for layer in imported.report.layers if layer.weights == "per_channel")
    assert all(c.weight_sqnr_db > 30 for c in changed)
    # the rewritten program runs and stays close to the original on random inputs
    x = np.concatenate([random_input(rng, shape) for _ in range(16)])
    ref = npuq.Emulator(imported.program, threads=1).run(x).astype(int)
    got = npuq.Emulator(rewritten, threads=1).run(x).astype(int)
    assert np.abs(ref - got).mean() < 4
    assert rewritten.info["per_layer_rewrite"]["layers"] == len(changed)


def test_cli_per_layer(tmp_path, capsys):
    from npuq.cli import main

    model, _ = mobilenet_v3_block(np.random.default_rng(12))
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    out = tmp_path / "m.npuq"
    assert main(["import-tflite", str(path), "-o", str(out), "--per-layer"]) == 0
    assert "per-layer rewrite" in capsys.readouterr().out
    program = npuq.load_program(out)
    assert all(op.tensors["multiplier"].shape == (1,) for op in program.layers())


def test_bias_correction_pulls_the_first_rewritten_layer_back_on_average(tmp_path, capsys):
    rng = np.random.default_rng(13)
    model, shape = mobilenet_v3_block(rng)
    program = import_tflite(model).program
    calibration = np.concatenate([random_input(rng, shape) for _ in range(32)])
    plain, changed = to_per_layer(program)
    corrected, changed_bc = to_per_layer(program, calibration=calibration)
    assert [c.name for c in changed] == [c.name for c in changed_bc]
    assert corrected.info["per_layer_rewrite"]["bias_correction"] is True
    first = changed[0].name  # every layer before it is unchanged, so its input is the original's
    _, ref = npuq.Emulator(program, threads=1).run(calibration, capture=True)

    def mean_error(p):
        _, got = npuq.Emulator(p, threads=1).run(calibration, capture=True)
        d = ref[first].astype(float) - got[first].astype(float)
        return np.abs(d.reshape(-1, d.shape[-1]).mean(axis=0)).mean()

    assert mean_error(corrected) <= mean_error(plain)
    assert changed_bc[0].bias_correction > 0
    # the command line takes the calibration inputs as a .npy
    from npuq.cli import main

    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    np.save(tmp_path / "calib.npy", calibration)
    out = tmp_path / "m.npuq"
    args = ["import-tflite", str(path), "-o", str(out), "--per-layer", "--calibration", str(tmp_path / "calib.npy")]
    assert main(args) == 0
    assert npuq.load_program(out).info["per_layer_rewrite"]["bias_correction"] is True
    assert main(["import-tflite", str(path), "-o", str(tmp_path / "x.npuq"), "--calibration", "c.npy"]) == 2
    assert "add --per-layer" in capsys.readouterr().err
