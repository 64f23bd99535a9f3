"""The scratch folder: a running command's folder is never touched, a killed one's is removed by the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lmsynth import constants, locks, scratch


_HOLDER = (
    "import sys, time; from lmsynth import scratch; d = scratch.process_dir(); (d / 'gated.jsonl').write_text('x');"
    "print(d, flush=True); time.sleep(120)"
)


def _start_holder() -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        env={**os.environ, "LMSYNTH_CACHE": str(constants.CACHE_DIR)},
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, Path(proc.stdout.readline().strip())


def test_a_live_commands_folder_stays_and_a_killed_ones_goes() -> None:
    proc, folder = _start_holder()
    try:
        assert folder.parent == scratch.root() and (folder / "gated.jsonl").is_file()
        assert scratch.clean_stale() == [] and folder.is_dir()  # its owner holds the lock
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert scratch.clean_stale() == [folder] and not folder.exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_scratch_dirs_are_private_and_removed_after_use() -> None:
    with scratch.scratch_dir("work") as d:
        assert d.parent == scratch.process_dir() and (d.stat().st_mode & 0o077) == 0
        (d / "f").write_text("x")
    assert not d.exists()


def test_a_folder_without_its_lock_is_left_while_young(tmp_path: Path) -> None:
    young = scratch.root() / "123-young"
    young.mkdir(parents=True)
    assert young not in scratch.clean_stale() and young.is_dir()  # a process between mkdir and flock
    old = scratch.root() / "124-old"
    old.mkdir()
    past = time.time() - 2 * locks.UNLOCKED_GRACE_S
    os.utime(old, (past, past))
    assert old in scratch.clean_stale() and not old.exists()


def test_normal_exit_removes_the_process_folder() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from lmsynth import scratch; print(scratch.process_dir())"],
        env={**os.environ, "LMSYNTH_CACHE": str(constants.CACHE_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and not Path(proc.stdout.strip()).exists()


def test_a_killed_prepare_leaves_no_half_built_output_after_the_next_command(tmp_path: Path) -> None:
    env = {**os.environ, "LMSYNTH_CACHE": str(constants.CACHE_DIR)}
    cmd = [sys.executable, "-m", "lmsynth"]
    killed = subprocess.run(
        [*cmd, "prepare", "--out", "prepared"],
        cwd=tmp_path,
        env={**env, "LMSYNTH_KILL_AT": "prepare.writing@3"},
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    (half,) = tmp_path.glob(".prepared.*.tmp")  # source text (gated) in a half-built output
    assert (half / "instructions.jsonl").is_file() and not (tmp_path / "prepared").exists()
    assert subprocess.run([*cmd, "version"], cwd=tmp_path, env=env, timeout=60).returncode == 0
    assert list(tmp_path.iterdir()) == [] and list(scratch.root().iterdir()) == []
    done = subprocess.run([*cmd, "prepare", "--out", "prepared"], cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0 and (tmp_path / "prepared" / "_COMPLETE").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_any_command_removes_a_killed_runs_work_folder() -> None:
    from lmsynth.pipeline.workdir import WORK_DIR

    stale = constants.CACHE_DIR / WORK_DIR / "999999-killed"
    (stale / "distilabel").mkdir(parents=True)
    (stale / ".lock").touch()  # nobody holds it: its run was killed
    (stale / "distilabel" / "records.jsonl").write_text('{"translated_conversation": "..."}\n')
    env = {**os.environ, "LMSYNTH_CACHE": str(constants.CACHE_DIR)}
    assert subprocess.run([sys.executable, "-m", "lmsynth", "version"], env=env, timeout=60).returncode == 0
    assert not stale.exists()
