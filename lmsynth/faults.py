"""Named kill points: where tests stop a command with SIGKILL to check what a killed command leaves behind.

`kill_point("release.encrypted")` does nothing unless `LMSYNTH_KILL_AT` names that point; then the process
kills itself with SIGKILL on the spot, exactly as `kill -9` would (no cleanup, no `finally`). With
`LMSYNTH_KILL_AT=name@N` it kills at the N-th pass of the point (1-based). A suffix picks another fault:
`name:SIGINT` / `name:SIGTERM` send that real signal to the process (Ctrl-C / `kill` at that very point),
`name:ENOSPC` raises the error a full disk gives (for systems where a test cannot mount a small tmpfs).
"""

from __future__ import annotations

import errno
import os
import signal

from lmsynth import constants


_passes: dict[str, int] = {}


def kill_point(name: str, path: object = None) -> None:
    """SIGKILL this process here when `LMSYNTH_KILL_AT` names this point (a no-op otherwise).

    `path`: the file or folder the code around the point writes, named by an injected ENOSPC.
    """
    wanted = constants.kill_at()
    if wanted is None:
        return
    wanted, _, fault = wanted.partition(":")
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] < int(nth or 1):
        return
    if fault == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))
    os.kill(os.getpid(), getattr(signal, fault) if fault else signal.SIGKILL)
