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
from collections.abc import Iterator
from pathlib import Path

from lmsynth import locks
from lmsynth.io import private_dir


logger = logging.getLogger(__name__)

WORK_DIR = "work"  # under the cache root


@contextlib.contextmanager
def run_work_dir(cache_root: Path) -> Iterator[Path]:
    """A fresh work folder for this process, locked while the block runs and removed after it.

    Work folders that no living process holds (left by a killed run) are removed first.
    """
    base = private_dir(Path(cache_root) / WORK_DIR)  # its runs' rows hold gated text
    clean_stale_work_dirs(base)
    path, fd = locks.process_folder(base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def clean_stale_work_dirs(base: Path) -> list[Path]:
    """Remove the work folders under `base` whose lock is free (their process is gone); return them."""
    removed = locks.sweep_unheld(base, lambda path: shutil.rmtree(path, ignore_errors=True))
    if removed:
        logger.info("removed %d work folders left by killed runs", len(removed))
    return removed


@contextlib.contextmanager
def unit_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock named `path` (created if missing, removed when released).

    The file is removed while the lock is held; a waiter that then wins the lock on the removed file sees
    that `path` no longer names it and locks again (`locks.hold`), so removal never lets two holders in.
    """
    fd = locks.hold(path)
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
