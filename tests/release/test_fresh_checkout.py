"""`lmsynth release v0.5` on a fresh checkout (no run folders) says what is missing and how to make it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent.parent


def test_release_without_run_folders_guides(tmp_path: Path) -> None:
    # The real release/v0.5.yaml, run where there is no runs/ folder, as a user would.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "lmsynth", "release", "v0.5", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and res.stderr.startswith("Error: ")
    text = " ".join(res.stderr.split())
    for config, pipeline in (
        ("llama-3.1", "pipelines/v0.1-llama31.yaml"),
        ("gemma-2", "pipelines/v0.3-gemma2.yaml"),
        ("gemma-3", "pipelines/v0.5-gemma3.yaml"),
    ):
        assert f"`{config}` (runs/{config})" in text
        assert f"lmsynth run {pipeline} --input runs/prepared --out runs/{config}" in text
    assert "--runs hf://datasets/ORG/NAME@REVISION" in text and "lmsynth demo" in text
    assert not (tmp_path / "hub").exists()
