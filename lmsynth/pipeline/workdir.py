"""Where a run keeps its scratch files, and the locks that let two runs share one cache.

Every `lmsynth run` process gets its own folder `<cache>/work/<pid>-<random>/` (distilabel's working folder,
telemetry events, the duplicate index of the flags stage), held by an exclusive `flock` on its `.lock` for
the life of the process. A killed process loses its lock with its life, so the next run removes every work
folder whose lock it can take: scratch files never outlive the next command, and two runs never share one.

Cache units are computed under a per-unit lock (`unit_lock`): when two runs reach the same unit, one computes
it and the other waits, then reads the finished unit instead of calling the model again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmsynth.io import private_dir


logger = logging.getLogger(__name__)

WORK_DIR = "work"  # under the cache root
_LOCK_NAME = ".lock"
_UNLOCKED_GRACE_S = 60.0


@contextlib.contextmanager
def run_work_dir(cache_root: Path) -> Iterator[Path]:
    """A fresh work folder for this process, locked while the block runs and removed after it.

    Work folders that no living process holds (left by a killed run) are removed first.
    """
    base = private_dir(Path(cache_root) / WORK_DIR)  # its runs' rows hold gated text
    clean_stale_work_dirs(base)
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
    fd = os.open(path / _LOCK_NAME, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def clean_stale_work_dirs(base: Path) -> list[Path]:
    """Remove the work folders under `base` whose lock is free (their process is gone); return them."""
    removed = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        if not path.is_dir():
            continue
        lock = path / _LOCK_NAME
        try:
            fd = os.open(lock, os.O_WRONLY)
        except FileNotFoundError:
            # Never locked: killed between mkdtemp and open, or a run starting right now (spare the young).
            if _age_s(path) < _UNLOCKED_GRACE_S:
                continue
            fd = None
        except OSError:
            continue
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a living run holds it
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        if fd is not None:
            os.close(fd)
    if removed:
        logger.info("removed %d work folders left by killed runs", len(removed))
    return removed


@contextlib.contextmanager
def unit_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock named `path` (created if missing, removed when released).

    The file is removed while the lock is held; a waiter that then wins the lock on the removed file sees
    that `path` no longer names it and locks again, so removal never lets two holders in at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def sweep_locks(folder: Path) -> int:
    """Remove the `*.lock` files in `folder` that no process holds (`unit_lock` files of killed runs)."""
    removed = 0
    for path in folder.glob("*.lock") if folder.is_dir() else []:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Same protocol as `unit_lock`: remove only the file we hold, so a waiter on it locks again.
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                removed += 1
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)
    return removed


def _age_s(path: Path) -> float:
    import time

    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
