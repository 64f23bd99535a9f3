"""The CLI shell: help teaches the flow, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from lmsynth.cli.commands import app


def test_help_lists_the_flow() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("prepare", "run", "release", "verify", "recover", "export"):
        assert f"lmsynth {verb}" in result.output


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys; from lmsynth.cli.commands import app; from typer.testing import CliRunner;"
        "CliRunner().invoke(app, ['--help']);"
        "heavy = {'vllm', 'torch', 'distilabel', 'datasets', 'gnupg', 'modelscope', 'matplotlib', 'pyarrow'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_ci_runs_the_readme_test_command() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme_cmds = [ln for ln in (root / "README.md").read_text().splitlines() if ln.startswith("bash scripts/")]
    assert len(readme_cmds) == 2
    assert readme_cmds[1] in (root / ".ci" / "run").read_text()
