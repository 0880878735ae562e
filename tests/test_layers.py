"""The architecture as a contract: each layer imports only those below it (import-linter, from
pyproject.toml), and the modules that promise to be cheap load neither torch nor transformers."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _assembled(tmp_path: Path) -> Path:
    """A copy of the `zoo` package to lint (and plant violations in)."""
    shutil.copytree(ROOT / "zoo", tmp_path / "zoo", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _lint(tree: Path) -> str:
    """import-linter on `tree`, through this interpreter (no PATH or script shebang involved), in
    this environment but for the import path; its report with the line wrapping undone."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install compot-zoo[test])")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "1000"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = " ".join((result.stdout + result.stderr).split())
    return f"exit {result.returncode}: {report}"


def test_the_layers_keep_their_contract(tmp_path):
    report = _lint(_assembled(tmp_path))
    assert report.startswith("exit 0:") and "Contracts: 5 kept, 0 broken" in report, report


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("zoo/publish/card.py", "import zoo.engine", "Publishing never imports the engine"),
        ("zoo/publish/card.py", "import zoo.format.checkpoint", "Publishing never imports the engine"),
        ("zoo/engine/whitening.py", "import zoo.files", "the engine imports nothing else"),
        ("zoo/methods/layout.py", "import zoo.engine", "the engine imports nothing else"),
        ("zoo/errors.py", "import zoo.engine", "the engine imports nothing else"),
        ("zoo/evaluators/wer.py", "import zoo.compression.config", "Evaluators know nothing of COMPOT"),
        ("zoo/modalities/whisper.py", "import zoo.publish.card", "Each layer imports only the layers below it"),
        ("zoo/format/record.py", "import zoo.pipeline", "Each layer imports only the layers below it"),
        ("zoo/nightly/manifest.py", "import zoo.nightly.report", "The nightly job's runner reads its report"),
    ],
)
def test_a_forbidden_import_breaks_the_contract(tmp_path, module, line, broken):
    tree = _assembled(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # a violation planted by the test\n")
    report = _lint(tree)
    assert not report.startswith("exit 0:") and f"{broken}" in report and "BROKEN" in report, report


@pytest.mark.parametrize(
    "module",
    [
        "zoo",
        "zoo.cli",
        "zoo.files",
        "zoo.digest",
        "zoo.modality_table",
        "zoo.compression.config",
        "zoo.format.record",
        "zoo.evaluators.scores",
        "zoo.publish.scorecard",
        "zoo.publish.publishers",
        "zoo.sources.catalogue",
    ],
)
def test_cheap_modules_load_neither_torch_nor_transformers(module):
    """`zoo --help`, `zoo list`, `zoo browse` and reading scorecards must not pay for torch."""
    code = f"import sys, {module}; print(sorted({{'torch', 'transformers'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} loads {result.stdout.strip()}"


def test_import_zoo_registers_the_quantizer_when_transformers_loads():
    code = (
        "import zoo, sys; assert 'transformers' not in sys.modules\n"
        "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING\n"
        "print('compot' in AUTO_QUANTIZER_MAPPING)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr
