"""Where the trained checkpoints come from: the optional data package npuq-checkpoints (packages/), or the folder
NPUQ_CHECKPOINT_DIR names; without either, every way in (the resolver, the listing, the command line) says how
to install them, and the lookup itself never imports torch."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from npuq import _shipped
from npuq._shipped import ENV_VAR, INSTALL_HINT, checkpoint_dir
from support import ROOT

DATA_PACKAGE = ROOT / "packages" / "npuq-checkpoints"
IMAGE = "mobilenet_v2_w0.5_sgd"


def shipped_file(name: str):
    directory = checkpoint_dir()
    assert directory is not None, f"no shipped checkpoints; {INSTALL_HINT}"
    return directory / f"{name}.safetensors"


@pytest.fixture
def not_installed(monkeypatch):
    """As if npuq-checkpoints were not installed (and no NPUQ_CHECKPOINT_DIR set)."""
    real = importlib.util.find_spec
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "npuq_checkpoints" else real(name, *a)
    )


def _python(args: list[str], **env) -> subprocess.CompletedProcess:
    """A fresh Python process with this one's import path and ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **env),
    )


# ------------------------------------------------------------------------------------------ the lookup
def test_the_installed_data_package_is_the_default(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    import npuq_checkpoints

    assert checkpoint_dir() == npuq_checkpoints.DIRECTORY
    assert {f"{n}.safetensors" for n in (IMAGE, "asr_digits")} <= {p.name for p in checkpoint_dir().iterdir()}
    monkeypatch.setenv(ENV_VAR, "")  # empty: unset
    assert checkpoint_dir() == npuq_checkpoints.DIRECTORY


def test_a_package_is_found_without_importing_it_and_a_stray_folder_is_not(monkeypatch, tmp_path):
    # a name of its own, so that the installed npuq_checkpoints cannot answer for the folder made here
    monkeypatch.setattr(_shipped, "DATA_PACKAGE", "npuq_checkpoints_probe")
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "npuq_checkpoints_probe"
    folder.mkdir()  # no __init__.py: the import system would take it for a namespace package
    assert importlib.util.find_spec("npuq_checkpoints_probe") is not None
    assert checkpoint_dir() is None
    (folder / "__init__.py").write_text("raise RuntimeError('the data package was imported')\n")
    importlib.invalidate_caches()
    assert checkpoint_dir() == folder.resolve()
    assert "npuq_checkpoints_probe" not in sys.modules


def test_the_override_is_listed_and_loaded(monkeypatch, tmp_path):
    from npuq._cliutil import shipped_checkpoints_help, shipped_image_checkpoints
    from npuq.models.checkpoints import list_checkpoints, load_checkpoint, resolve_checkpoint

    source = shipped_file(IMAGE)
    shutil.copy(source, tmp_path / source.name)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert checkpoint_dir() == tmp_path
    assert list_checkpoints() == shipped_image_checkpoints() == [IMAGE]
    assert resolve_checkpoint(IMAGE) == tmp_path / source.name
    model, meta = load_checkpoint(IMAGE)
    assert meta["model"] == "mobilenet_v2" and meta["width"] == 0.5 and not model.training
    assert IMAGE in shipped_checkpoints_help() and "npuq[checkpoints]" not in shipped_checkpoints_help()
    with pytest.raises(FileNotFoundError, match=r"not among the shipped checkpoints in NPUQ_CHECKPOINT_DIR=") as info:
        resolve_checkpoint("mobilenet_v1_w0.5_sgd")
    assert f"available: {IMAGE})" in str(info.value)  # checkpoints of the kind are there: no install hint


@pytest.mark.parametrize("make", ["missing", "file"])
def test_an_override_that_is_not_a_directory_is_named(monkeypatch, tmp_path, make):
    from npuq.models.checkpoints import list_checkpoints, resolve_checkpoint

    target = tmp_path / "ckpts"
    if make == "file":
        target.write_text("")
    monkeypatch.setenv(ENV_VAR, str(target))
    for call in (checkpoint_dir, list_checkpoints, lambda: resolve_checkpoint(IMAGE)):
        with pytest.raises(ValueError, match=re.escape(f"NPUQ_CHECKPOINT_DIR={target}: not a directory")):
            call()


# ------------------------------------------------------------------------------------------ none installed
def test_without_the_data_package_every_way_in_says_how_to_install_it(not_installed):
    from npuq._cliutil import shipped_checkpoints_help, shipped_image_checkpoints
    from npuq.asr import load_asr_checkpoint
    from npuq.models.checkpoints import CheckpointNotFoundError, list_checkpoints, load_checkpoint, resolve_checkpoint

    assert checkpoint_dir() is None
    assert list_checkpoints() == shipped_image_checkpoints() == []
    for call in (
        lambda: resolve_checkpoint(IMAGE),
        lambda: load_checkpoint(IMAGE),
        lambda: resolve_checkpoint("asr_digits", kind="asr"),
        lambda: load_asr_checkpoint(),
    ):
        with pytest.raises(CheckpointNotFoundError, match="no shipped checkpoints are installed") as info:
            call()
        assert "pip install 'npuq[checkpoints]'" in str(info.value)
        assert "pip install ./packages/npuq-checkpoints" in str(info.value)
    assert "none installed" in shipped_checkpoints_help() and "npuq[checkpoints]" in shipped_checkpoints_help()


def test_a_folder_without_checkpoints_of_the_kind_gets_the_hint(monkeypatch, tmp_path):
    from npuq.models.checkpoints import CheckpointNotFoundError, list_checkpoints, resolve_checkpoint

    speech = shipped_file("asr_digits")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert list_checkpoints() == []
    for kind in ("image", "asr"):
        with pytest.raises(CheckpointNotFoundError, match=re.escape(f"NPUQ_CHECKPOINT_DIR={tmp_path}")) as info:
            resolve_checkpoint("asr_digits", kind=kind)
        assert "npuq[checkpoints]" in str(info.value), kind
    # only the speech recognizer there: an image name still gets the hint, an ASR name the listing
    shutil.copy(speech, tmp_path / speech.name)
    with pytest.raises(CheckpointNotFoundError, match=r"npuq\[checkpoints\]"):
        resolve_checkpoint(IMAGE)
    with pytest.raises(CheckpointNotFoundError, match=r"files there: asr_digits\)") as info:
        resolve_checkpoint("nope", kind="asr")
    assert "npuq[checkpoints]" not in str(info.value)


def test_the_other_users_of_the_shipped_names_give_the_hint(not_installed):
    from npuq.apps.ptq_benchmark import BenchConfig

    with pytest.raises(ValueError, match=r"not found; available: none installed; .*npuq\[checkpoints\]"):
        BenchConfig(checkpoints=(IMAGE,)).validate()


def test_the_command_line_without_checkpoints_is_one_line_and_exit_2(tmp_path):
    """As a user without npuq-checkpoints meets it, in a fresh process: the --model help still builds, and the
    command fails with the install hint on one line."""
    result = _python(
        ["-m", "npuq.cli", "quantize", "--model", IMAGE, "--limit", "1"], NPUQ_CHECKPOINT_DIR=str(tmp_path)
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("npuq quantize: no checkpoint 'mobilenet_v2_w0.5_sgd'"), lines[0]
    assert "pip install 'npuq[checkpoints]'" in lines[0] and "./packages/npuq-checkpoints" in lines[0]


def test_the_command_line_help_and_list_without_checkpoints(capsys, not_installed):
    from npuq import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["compile", "--help"])
    assert info.value.code == 0
    assert "npuq[checkpoints]" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["quantize", "--list"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no shipped checkpoints installed" in err and "npuq[checkpoints]" in err


def test_a_wrong_override_leaves_the_help_working_and_fails_the_command(capsys, monkeypatch, tmp_path):
    from npuq import cli

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as info:
        cli.main(["quantize", "--help"])
    assert info.value.code == 0
    capsys.readouterr()
    assert cli.main(["quantize", "--model", IMAGE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"NPUQ_CHECKPOINT_DIR={tmp_path / 'missing'}: not a directory" in err


def test_the_lookup_imports_neither_torch_nor_the_data_package():
    code = (
        "import sys\nimport npuq._shipped, npuq._cliutil\n"
        "assert npuq._shipped.checkpoint_dir() is not None\n"
        "assert npuq._cliutil.shipped_image_checkpoints()\n"
        "print(sorted(m for m in ('torch', 'safetensors', 'npuq_checkpoints') if m in sys.modules))"
    )
    result = _python(["-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------ packaging
def test_the_data_package_version_is_the_one_npuq_pins():
    data = tomllib.loads((DATA_PACKAGE / "pyproject.toml").read_text())["project"]
    npuq_project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = npuq_project["project"]["optional-dependencies"]
    assert data["name"] == "npuq-checkpoints" and not data.get("dependencies")
    assert extras["checkpoints"] == [f"npuq-checkpoints=={data['version']}"]
    init = (DATA_PACKAGE / "npuq_checkpoints" / "__init__.py").read_text()
    assert f'__version__ = "{data["version"]}"' in init
    for extra in ("test", "demo", "bench", "lrf"):  # their commands and tests load shipped checkpoints
        assert "npuq[checkpoints]" in extras[extra], extra
    assert "packages/" in npuq_project["tool"]["scikit-build"]["sdist"]["exclude"]
    assert not list((ROOT / "python" / "npuq").rglob("*.safetensors")), "a checkpoint is back in npuq's wheel"


def _setup_snippet() -> str:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    match = re.search(r'wants_checkpoints="\$\(python3 - "\$extras" <<\'EOF\'\n(.*?)\nEOF\n', text, re.S)
    assert match, "scripts/setup.sh: the checkpoints snippet moved"
    return match.group(1)


@pytest.mark.parametrize(
    ("extras", "wanted"),
    [("", False), ("test", True), ("checkpoints", True), ("speech", False), ("speech,demo", True), ("torch", False)],
)
def test_setup_installs_the_data_package_for_the_extras_that_need_it(extras, wanted):
    result = subprocess.run(
        [sys.executable, "-", extras], input=_setup_snippet(), capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout.strip() == "yes") == wanted, (extras, result.stdout)
