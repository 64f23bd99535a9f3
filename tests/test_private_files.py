"""Files holding gated text are 0600 in 0700 folders whatever the umask; other files follow the umask.

Real commands run as subprocesses under umask 022 and 000: `prepare` (LMSYS-Chat-1M text), `run` (the
stage cache units and the run's records hold the translations). `recover` and `export` are in
tests/test_recover.py (they need its release).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lmsynth.io import atomic_dir, make_private, private_dir, write_text
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


ROOT = Path(__file__).resolve().parents[1]
UMASKS = [0o022, 0o000]


def modes(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (and itself) that is not private: relative path → octal mode."""
    wrong = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong[path.relative_to(folder).as_posix() or "."] = oct(mode)
    return wrong


def lmsynth(*args: str, cwd: Path, umask: int, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LMSYNTH_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "lmsynth", *args], cwd=cwd, env=env, umask=umask, capture_output=True, text=True
    )


@pytest.mark.parametrize("umask", UMASKS, ids=["umask022", "umask000"])
def test_prepare_writes_a_private_folder(tmp_path: Path, umask: int) -> None:
    proc = lmsynth("prepare", "--out", "runs/prepared", cwd=tmp_path, umask=umask, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    prepared = tmp_path / "runs" / "prepared"
    assert (prepared / "instructions.jsonl").stat().st_size > 0
    assert modes(prepared) == {}


@pytest.mark.parametrize("umask", UMASKS, ids=["umask022", "umask000"])
def test_run_cache_units_and_records_are_private(tmp_path: Path, umask: int) -> None:
    prep = write_prepared(tmp_path / "prepared", [make_record(i) for i in range(4)])
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2)
    cache = tmp_path / "cache"
    proc = lmsynth("run", str(pipe), "--input", str(prep), "--out", "out", cwd=tmp_path, umask=umask, cache=cache)
    assert proc.returncode == 0, proc.stderr
    units = sorted((cache / "translate").rglob("*.json"))
    assert units, "no translate cache unit written"
    assert any("訳" in u.read_text(encoding="utf-8") for u in units)  # they hold the translations
    for stage in ("translate", "generate", "judge"):
        assert modes(cache / stage) == {}, stage
    for sub in ("records", "unsafe"):
        assert modes(tmp_path / "out" / sub) == {}, sub
    # run.json is no gated text: it follows the umask.
    assert stat.S_IMODE((tmp_path / "out" / "run.json").stat().st_mode) == 0o666 & ~umask


class TestHelpers:
    def test_private_dir_creates_missing_parents_private_and_narrows_an_existing_folder(self, tmp_path: Path) -> None:
        (tmp_path / "open").mkdir(mode=0o777)
        os.chmod(tmp_path / "open", 0o777)
        private_dir(tmp_path / "open")
        private_dir(tmp_path / "a" / "b" / "c")
        assert modes(tmp_path / "open") == {} and modes(tmp_path / "a") == {}

    def test_make_private_leaves_symlinks_and_their_targets_alone(self, tmp_path: Path) -> None:
        outside = tmp_path / "outside.txt"
        outside.write_text("x")
        os.chmod(outside, 0o644)
        folder = tmp_path / "f"
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "data.txt").write_text("y")
        (folder / "link").symlink_to(outside)
        make_private(folder)
        assert modes(folder) == {}
        assert stat.S_IMODE(outside.stat().st_mode) == 0o644

    def test_a_public_atomic_folder_follows_the_umask(self, tmp_path: Path) -> None:
        from lmsynth import io

        with atomic_dir(tmp_path / "public") as tmp:
            write_text(tmp / "card.md", "hello")
        assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o777 & ~io._UMASK
        assert stat.S_IMODE((tmp_path / "public" / "card.md").stat().st_mode) == 0o666 & ~io._UMASK
