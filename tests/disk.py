"""A small, really full file system for tests: a tmpfs mounted for the test (root, as CI runs).

Where mounting is impossible (no privilege), `small_disk` yields None and the tests inject the same error
at named points instead (`LMSYNTH_KILL_AT=<point>:ENOSPC`, `lmsynth.faults`), so nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path | None]:
    """A tmpfs of `size` at `path` for the block (None when it cannot be mounted); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("LMSYNTH_TEST_INJECT_ENOSPC"):  # try the fallback on a machine that can mount
        yield None
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, *, leave: int) -> Path:
    """Fill `disk` with a file until about `leave` bytes are free; return the filler (delete it to free space)."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        chunk = b"\0" * (1 << 20)
        todo = max(0, free - leave)
        while todo > 0:
            try:
                todo -= os.write(fd, chunk[: min(len(chunk), todo)])
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


def free_bytes(disk: Path) -> int:
    """Free bytes on `disk`."""
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize
