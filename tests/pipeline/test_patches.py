"""The framework patches: applied in one place, and a changed framework stops a run with one line."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from lmsynth.pipeline.executor import patches
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


REPO = Path(__file__).resolve().parents[2]


def _lmsynth_run_with(tmp_path: Path, change: str) -> subprocess.CompletedProcess[str]:
    """A real `lmsynth run` (the console entry point) in a process where `change` ran first."""
    pipe, _ = write_fake_pipeline(tmp_path)
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(3)])
    argv = ["lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")]
    # `lmsynth.pipeline` first: its warning filter, as the console entry point has it.
    code = f"import sys\nimport lmsynth.pipeline\n{change}\nsys.argv = {argv!r}\n"
    code += "from lmsynth.cli import main\nmain()\n"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LMSYNTH_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and "LMSYNTH_DEBUG" not in line]


@pytest.mark.timeout(300)
def test_a_renamed_patch_target_stops_a_real_run_with_one_line(tmp_path: Path) -> None:
    renamed = (
        "from distilabel.pipeline import batch\n"
        "batch._Batch._refresh_data_hash = batch._Batch._update_data_hash\n"
        "del batch._Batch._update_data_hash"
    )
    done = _lmsynth_run_with(tmp_path, renamed)
    assert done.returncode == 1, done.stderr
    (line,) = _errors(done.stderr)
    assert "`distilabel.pipeline.batch._Batch._update_data_hash` is gone" in line
    assert "lmsynth.pipeline.executor.patches" in line
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.timeout(300)
def test_another_distilabel_version_stops_a_real_run_with_one_line(tmp_path: Path) -> None:
    done = _lmsynth_run_with(tmp_path, "import distilabel\ndistilabel.__version__ = '1.6.0'")
    assert done.returncode == 1, done.stderr
    (line,) = _errors(done.stderr)
    assert "distilabel 1.6.0 is installed" in line and "distilabel==1.5.3" in line


@pytest.mark.parametrize(("module", "path"), patches.TARGETS)
def test_every_patch_target_is_checked(monkeypatch: pytest.MonkeyPatch, module: str, path: str) -> None:
    patches.check()  # the installed framework has every target
    *parents, name = path.split(".")
    owner = importlib.import_module(module)
    for part in parents:
        owner = getattr(owner, part)
    monkeypatch.delattr(owner, name)
    with pytest.raises(patches.FrameworkChangedError, match=f"^`{module}.{path}` is gone") as e:
        patches.apply()
    assert "\n" not in str(e.value)


def test_apply_changes_only_what_it_names_and_is_idempotent() -> None:
    from distilabel.pipeline import base
    from distilabel.pipeline.batch import _Batch

    patches.apply()
    patches.apply()
    batch = _Batch(seq_no=0, step_name="s", last_batch=False, data=[[{"a": 1}]])
    assert batch.data_hash is None
    assert base.time.sleep.__self__.POLL_S == patches._QuickPolls.POLL_S
    assert base.time.monotonic is __import__("time").monotonic


def test_no_other_module_assigns_to_a_framework_attribute() -> None:
    """The framework names the patches touch appear, outside the patch module, in no assignment."""
    names = {path.split(".")[-1] for _, path in patches.TARGETS} - {"time"}
    offenders = []
    for path in (REPO / "lmsynth").rglob("*.py"):
        if path.name == "patches.py":
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#")[0]
            if "=" in code and any(f".{n} =" in code or f".{n}=" in code for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}")
            if "set_start_method" in code or "distilabel_base.time" in code:
                offenders.append(f"{path.relative_to(REPO)}:{lineno}")
    assert offenders == []


def test_a_pool_whose_idle_worker_died_holding_its_queue_lock_still_terminates(monkeypatch) -> None:
    """An idle worker waits for a task holding the task queue's read lock; a SIGTERM to the run's whole process
    group kills it there, and the stdlib's `Pool.terminate` then waited for that lock forever."""
    import multiprocessing as mp
    import os
    import signal
    import threading
    import time

    patches.apply()
    monkeypatch.setattr(patches, "POOL_LOCK_WAIT_S", 0.5)
    pool = mp.get_context("fork").Pool(1)
    (worker,) = pool._pool
    deadline = time.monotonic() + 30
    while pool._inqueue._rlock.acquire(False):  # the idle worker has not taken the lock yet
        pool._inqueue._rlock.release()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=30)
    ended = threading.Event()
    threading.Thread(target=lambda: (pool.terminate(), ended.set()), daemon=True).start()
    assert ended.wait(timeout=30), "Pool.terminate waited for the dead worker's lock"
    assert all(not p.is_alive() for p in pool._pool)


def test_a_changed_pool_drain_is_refused(monkeypatch) -> None:
    import multiprocessing.pool

    monkeypatch.setattr(multiprocessing.pool.Pool, "_help_stuff_finish", staticmethod(lambda inqueue, handler: None))
    with pytest.raises(patches.FrameworkChangedError, match="no longer takes"):
        patches.check()
