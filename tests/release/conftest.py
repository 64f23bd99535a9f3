"""A small project folder: the real v0.5 manifest, synthetic run folders for its three subsets, a passphrase."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from lmsynth import constants
from lmsynth.testing import write_run_dir


PASSPHRASE = "planted-passphrase-0f9e8d7c6b5a-鍵"
N = 60
SHAPES = {"llama-3.1": "v0.1", "gemma-2": "v0.3", "gemma-3": "v0.5"}


@dataclass
class Project:
    root: Path
    manifest: Path
    passphrase: SecretStr

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    def runs(self, config: str) -> Path:
        return self.root / "runs" / config


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The real release/v0.5.yaml, pointed at synthetic runs under a temporary current folder."""
    monkeypatch.chdir(tmp_path)
    return make_project(tmp_path)


def make_project(tmp_path: Path) -> Project:
    """Write the project folder into `tmp_path` (the current folder its manifest's relative paths assume)."""
    data = yaml.safe_load((constants.RELEASE_DIR / "v0.5.yaml").read_text(encoding="utf-8"))
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    for s in data["subsets"]:
        (pipelines / f"{s['config']}.yaml").write_text(f"name: {s['config']}\nn: {s['generation']['n']}\n")
        s["pipelines"] = [f"pipelines/{s['config']}.yaml"]
        write_run_dir(tmp_path / s["records"], N, shape=SHAPES[s["config"]], seed=7, unsafe_n=4)
    write_run_dir(tmp_path / "runs" / "unused", N, seed=7, unsafe_n=4, prepared=tmp_path / "runs" / "prepared")
    manifest = tmp_path / "v0.5.yaml"
    manifest.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return Project(root=tmp_path, manifest=manifest, passphrase=SecretStr(PASSPHRASE))


SMALL_N = 12


@pytest.fixture
def small_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real v0.5 manifest cut to its gemma-3 subset, over a small synthetic run folder and prepared folder."""
    monkeypatch.chdir(tmp_path)
    data = yaml.safe_load((constants.RELEASE_DIR / "v0.5.yaml").read_text(encoding="utf-8"))
    data["subsets"] = [s for s in data["subsets"] if s["config"] == "gemma-3"]
    data["subsets"][0].update(records="runs/gemma-3", prepared="runs/prepared", pipelines=[])
    write_run_dir(tmp_path / "runs" / "gemma-3", SMALL_N, seed=7, unsafe_n=2, prepared=tmp_path / "runs" / "prepared")
    (tmp_path / "v0.5.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return tmp_path
