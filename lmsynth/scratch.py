"""Scratch folders: the one place lmsynth keeps temporary files, and the cleaning of what killed commands left.

Everything temporary that can hold gated text (sort spills of the gated instructions, the plaintext of a
Hub-gated upload, files decrypted by verify and recover, key-derivation spills) and every release staging
tree lives under `<cache>/tmp/<pid>-<random>/`, one folder per process. The process holds an exclusive
`flock` on that folder's `.lock` for as long as it lives; the kernel drops the lock when the process dies,
even by `kill -9`. Every command starts by removing the folders whose lock it can take (their owner is
gone), so a killed command leaves nothing the next one does not remove, and a command running at the same
time is never touched.

GnuPG homes need short paths (the agent's socket lives there), so they stay in the system temporary folder;
each is listed in its process folder's `gnupg-homes`, and cleaning stops their agents and removes them too.
Likewise the temporary siblings `io.atomic_dir` builds an output folder in (a prepared set, recovered
records: gated text too) are listed in `pending`, so a killed command's half-built output goes as well.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lmsynth import constants, locks


log = logging.getLogger(__name__)

GNUPG_HOMES = "gnupg-homes"
PENDING = "pending"

_state: dict[str, object] = {}  # this process's folder, the fd holding its lock, and (pid, root) they are for


def root() -> Path:
    """`<cache>/tmp`: the parent of every process's scratch folder."""
    return constants.CACHE_DIR / "tmp"


def process_dir() -> Path:
    """This process's scratch folder (created, and stale ones cleaned, on first use)."""
    base = root()
    if _state.get("key") != (os.getpid(), base):  # first use, a forked child, or another cache: a new folder
        clean_stale()
        path, fd = locks.process_folder(base)
        _state.update(key=(os.getpid(), base), path=path, fd=fd)
        atexit.register(_remove_own, path, os.getpid())
    return _state["path"]  # type: ignore[return-value]


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private (0700) folder in this process's scratch folder, removed when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=process_dir()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def register_gnupg_home(home: Path) -> None:
    """Note a GnuPG home of this process, so that cleaning after a kill stops its agent and removes it."""
    with open(process_dir() / GNUPG_HOMES, "a", encoding="utf-8") as f:
        f.write(f"{home}\n")


def register_pending(path: Path) -> None:
    """Note a temporary output folder of this process, removed by the cleaning if the process is killed."""
    with open(process_dir() / PENDING, "a", encoding="utf-8") as f:
        f.write(f"{path}\n")


def remove_gnupg_home(home: Path | str) -> None:
    """Stop the agent of a GnuPG home and remove the folder."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
            capture_output=True,
            timeout=10,
            check=False,
            env=constants.child_env(),
        )
    shutil.rmtree(home, ignore_errors=True)


def clean_stale() -> list[Path]:
    """Remove the scratch folders of lmsynth processes that are gone; return them.

    A folder is removed only when its lock can be taken, so the folders of running commands stay.
    """
    removed = locks.sweep_unheld(root(), _remove, keep=_state.get("path"))  # type: ignore[arg-type]
    if removed:
        log.info("removed %d scratch folder(s) of killed lmsynth commands", len(removed))
    return removed


# Private helpers


def _remove_own(path: Path, pid: int) -> None:
    """At a normal exit: this process's folder goes (a forked child leaves its parent's alone)."""
    if os.getpid() == pid:
        _remove(path)


def _remove(entry: Path) -> None:
    homes = entry / GNUPG_HOMES
    if homes.is_file():
        for line in homes.read_text(encoding="utf-8").splitlines():
            if line.strip():
                remove_gnupg_home(line.strip())
    pending = entry / PENDING
    if pending.is_file():  # renamed into place on success: only a killed command's are still there
        for line in pending.read_text(encoding="utf-8").splitlines():
            if line.strip():
                shutil.rmtree(line.strip(), ignore_errors=True)
    shutil.rmtree(entry, ignore_errors=True)
