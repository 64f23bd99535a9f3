"""The project-folder rule: `--project`, else $LMSYNTH_HOME, else the current folder; its files win, file by file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsynth import constants, project


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(constants, "LMSYNTH_HOME", None)
    monkeypatch.chdir(tmp_path)
    yield
    project.set_project(None)


def _write(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_an_empty_folder_gets_the_shipped_files(tmp_path: Path) -> None:
    assert project.find("release/v0.5.yaml") == constants.RELEASE_DIR / "v0.5.yaml"
    assert project.find("pipelines/prompts/judge_single.txt").is_file()
    assert project.search_path("cards") == [constants.CARDS_DIR]


def test_the_current_folder_wins_file_by_file(tmp_path: Path) -> None:
    mine = _write(tmp_path / "release" / "v0.5.yaml")
    _write(tmp_path / "cards" / "index.md.j2")
    assert project.find("release/v0.5.yaml") == mine
    assert project.find("release/v0.3.yaml") == constants.RELEASE_DIR / "v0.3.yaml"  # not mine: the shipped one
    assert project.search_path("cards") == [tmp_path / "cards", constants.CARDS_DIR]


def test_project_option_then_home_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd_copy = _write(tmp_path / "release" / "v0.5.yaml")
    home = tmp_path / "home"
    home_copy = _write(home / "release" / "v0.5.yaml")
    monkeypatch.setattr(constants, "LMSYNTH_HOME", home)
    assert project.find("release/v0.5.yaml") == home_copy
    other = tmp_path / "other"
    other.mkdir()
    project.set_project(other)
    assert project.project_dir() == other
    assert project.find("release/v0.5.yaml") == constants.RELEASE_DIR / "v0.5.yaml"  # other has none
    project.set_project(None)
    monkeypatch.setattr(constants, "LMSYNTH_HOME", None)
    assert project.find("release/v0.5.yaml") == cwd_copy


def test_a_file_found_nowhere_is_named_in_the_project_folder(tmp_path: Path) -> None:
    assert project.find("release/v9.9.yaml") == tmp_path / "release" / "v9.9.yaml"
    assert project.find(tmp_path / "abs.yaml") == tmp_path / "abs.yaml"


def test_a_manifest_resolves_against_its_project_folder(tmp_path: Path) -> None:
    assert project.manifest_root(tmp_path / "proj" / "release" / "v0.5.yaml") == tmp_path / "proj"
    assert project.manifest_root(tmp_path / "elsewhere" / "v0.5.yaml") == tmp_path / "elsewhere"
    assert project.manifest_root(constants.RELEASE_DIR / "v0.5.yaml") == constants.BUNDLED_DIR


def test_cli_project_option_is_global(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmsynth.cli.commands import app

    res = CliRunner().invoke(app, ["--help"])
    assert "--project" in res.stdout and "LMSYNTH_HOME" in res.stdout
    res = CliRunner().invoke(app, ["--project", str(tmp_path), "version"])
    assert res.exit_code == 0, res.output
    assert project.project_dir() == tmp_path
