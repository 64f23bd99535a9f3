"""ENOSPC anywhere is one line naming the full folder, exit 1, and what was there before is untouched.

Each command runs as a real process with the folder it writes (its `--out`, the cache, the system temp
folder) on a small tmpfs that is full (`tests.disk`). Where no tmpfs can be mounted, the same error is
injected at a named point of the command instead (`LMSYNTH_KILL_AT=<point>:ENOSPC`).
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmsynth import constants
from tests.disk import fill, small_disk
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared
from tests.test_recover import released  # noqa: F401 — a local hub holding v0.5, sample-derived key


def _lmsynth(*args: str, cwd: Path, kill_at: str | None = None, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env}
    full_env.pop("LMSYNTH_KILL_AT", None)
    full_env.pop(constants.PASSPHRASE_ENV, None)  # the hub's key is derived from the bundled sample
    if kill_at:
        full_env["LMSYNTH_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "lmsynth", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600
    )


def _one_line(proc: subprocess.CompletedProcess, path: Path) -> None:
    """Exit 1 and one line naming `path` (or a folder in it)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == f"Error: No space left on device: {path}" or lines[0].startswith(
        f"Error: No space left on device: {path}/"
    ), lines


def _same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not (cmp.left_only or cmp.right_only or cmp.diff_files), (cmp.left_only, cmp.right_only, cmp.diff_files)
    for sub in cmp.common_dirs:
        _same_tree(a / sub, b / sub)


@pytest.fixture
def run_inputs(tmp_path: Path) -> tuple[Path, Path]:
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(8)], [make_record(90)])
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2, window=4)
    return pipe, prep


@pytest.mark.timeout(900)
def test_run_with_a_full_cache_is_one_line_and_leaves_the_run_folder(
    tmp_path: Path, run_inputs: tuple[Path, Path]
) -> None:
    pipe, prep = run_inputs
    out = tmp_path / "out"
    done = _lmsynth(
        "run", str(pipe), "--input", str(prep), "--out", str(out), cwd=tmp_path, LMSYNTH_CACHE=str(tmp_path / "c1")
    )
    assert done.returncode == 0, done.stderr
    before = tmp_path / "before"
    subprocess.run(["cp", "-a", str(out), str(before)], check=True)
    with small_disk(tmp_path / "disk", size="1m") as disk:
        cache = (disk or tmp_path) / "cache"
        if disk is not None:
            cache.mkdir()
            fill(disk, leave=8192)
        failed = _lmsynth(
            "run",
            str(pipe),
            "--input",
            str(prep),
            "--out",
            str(out),
            cwd=tmp_path,
            kill_at=None if disk else "run.caching:ENOSPC",
            LMSYNTH_CACHE=str(cache),
        )
        _one_line(failed, cache)
    _same_tree(before, out)


@pytest.mark.timeout(900)
def test_run_onto_a_full_disk_is_one_line_and_writes_nothing(tmp_path: Path, run_inputs: tuple[Path, Path]) -> None:
    pipe, prep = run_inputs
    with small_disk(tmp_path / "disk", size="1m") as disk:
        out = (disk or tmp_path) / "out"
        if disk is not None:
            fill(disk, leave=8192)
        failed = _lmsynth(
            "run",
            str(pipe),
            "--input",
            str(prep),
            "--out",
            str(out),
            cwd=tmp_path,
            kill_at=None if disk else "run.writing:ENOSPC",
            LMSYNTH_CACHE=str(tmp_path / "cache"),
        )
        _one_line(failed, out)
        assert not out.exists() or not [p.name for p in out.rglob("*")], list(out.rglob("*"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("leave", [0, 16384, 65536])
def test_release_with_a_full_cache_is_one_line(released: Path, tmp_path: Path, leave: int) -> None:  # noqa: F811
    # The build's scratch folder (sort spills, staging tree, gpg's output) is in the cache; gpg said "need
    # symmetric passphrase" when the disk was full.
    manifest = released.parent / "v0.5.yaml"
    with small_disk(tmp_path / "disk", size="2m") as disk:
        cache = (disk or tmp_path) / "cache"
        cache.mkdir()
        if disk is not None:
            fill(disk, leave=leave)
        failed = _lmsynth(
            "release",
            "v0.5",
            "--manifest",
            str(manifest),
            "--dry-run",
            "--out",
            str(tmp_path / "build"),
            cwd=tmp_path,
            kill_at=None if disk else "release.staging:ENOSPC",
            LMSYNTH_CACHE=str(cache),
        )
        _one_line(failed, cache)
        assert not (tmp_path / "build").exists()


@pytest.mark.timeout(900)
def test_recover_and_export_onto_a_full_disk_are_one_line_and_keep_the_previous_output(
    released: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    env = {"LMSYNTH_CACHE": str(tmp_path / "cache")}
    with small_disk(tmp_path / "disk", size="2m") as disk:
        base = disk or tmp_path
        rec, sft = base / "rec", base / "sft"
        args = ("recover", "--from", str(released), "--revision", "v0.5", "--out", str(rec))
        assert _lmsynth(*args, cwd=tmp_path, **env).returncode == 0
        assert _lmsynth("export", "sft", "--input", str(rec), "--out", str(sft), cwd=tmp_path, **env).returncode == 0
        subprocess.run(["cp", "-a", str(rec), str(tmp_path / "rec-before")], check=True)
        subprocess.run(["cp", "-a", str(sft), str(tmp_path / "sft-before")], check=True)
        if disk is not None:
            fill(disk, leave=4096)
        failed = _lmsynth(*args, cwd=tmp_path, kill_at=None if disk else "recover.writing:ENOSPC", **env)
        _one_line(failed, rec)
        failed = _lmsynth(
            "export",
            "sft",
            "--input",
            str(rec),
            "--out",
            str(sft),
            "--min-score",
            "0",
            cwd=tmp_path,
            kill_at=None if disk else "export.writing:ENOSPC",
            **env,
        )
        _one_line(failed, sft)
        _same_tree(tmp_path / "rec-before", rec)
        _same_tree(tmp_path / "sft-before", sft)


@pytest.mark.timeout(900)
def test_recover_with_a_full_cache_is_one_line(released: Path, tmp_path: Path) -> None:  # noqa: F811
    # recover decrypts the gated files into a scratch folder in the cache.
    with small_disk(tmp_path / "disk", size="1m") as disk:
        cache = (disk or tmp_path) / "cache"
        cache.mkdir()
        if disk is not None:
            fill(disk, leave=0)
        failed = _lmsynth(
            "recover",
            "--from",
            str(released),
            "--revision",
            "v0.5",
            "--out",
            str(tmp_path / "rec"),
            cwd=tmp_path,
            kill_at=None if disk else "recover.writing:ENOSPC",
            LMSYNTH_CACHE=str(cache),
        )
        _one_line(failed, cache if disk is not None else tmp_path / "rec")
        assert not (tmp_path / "rec").exists()
