"""Locks on paths, and folders that belong to one living process: the one implementation of both.

`hold` takes an exclusive `flock` on a file or a folder that its holder may remove when done (a waiter that
then wins the lock on the removed path locks the new one). `process_folder` makes a folder
`<base>/<pid>-<random>/` and holds its `.lock` for the life of the process: the kernel drops the lock when
the process dies, even by `kill -9`, so `sweep_unheld` removes exactly the folders of processes that are
gone. The scratch folders (`lmsynth.scratch`), the run work folders (`lmsynth.pipeline.workdir`), cache
units and run folders, and the local target's folder are all locked through here.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


LOCK_FILE = ".lock"
# A process folder without its lock file is a process between `mkdir` and `flock`, unless it is older than this.
UNLOCKED_GRACE_S = 60.0


def hold(path: Path, *, folder: bool = False, on_wait: Callable[[], None] | None = None) -> int:
    """Lock `path` exclusively (a file, or with `folder` the folder itself; created if missing); the fd.

    Closing the fd releases the lock. `on_wait` runs once before waiting for another holder.
    """
    while True:
        try:
            if folder:
                path.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except FileNotFoundError:
            continue  # removed by its holder between our mkdir and open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def process_folder(base: Path) -> tuple[Path, int]:
    """A fresh folder `<base>/<pid>-<random>/` (0700) and the fd of the lock this process holds on it."""
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=base))
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return path, fd


def sweep_unheld(base: Path, remove: Callable[[Path], None], *, keep: Path | None = None) -> list[Path]:
    """Remove (with `remove`) the process folders under `base` that no living process holds; return them.

    A folder is removed while this process holds its lock, so its owner cannot be starting meanwhile; a
    folder with no lock file yet is spared for `UNLOCKED_GRACE_S`.
    """
    removed = []
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        if entry.is_dir() and entry != keep and _remove_if_unheld(entry, remove):
            removed.append(entry)
    return removed


# Private helpers


def _remove_if_unheld(entry: Path, remove: Callable[[Path], None]) -> bool:
    try:
        fd = os.open(entry / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        try:
            young = time.time() - entry.stat().st_mtime < UNLOCKED_GRACE_S
        except FileNotFoundError:
            return False
        if young:
            return False  # its process is between mkdir and flock
        remove(entry)
        return True
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its process is alive
        remove(entry)
        return True
    finally:
        os.close(fd)
