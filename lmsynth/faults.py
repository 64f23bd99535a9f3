"""Named kill points: where tests stop a command with SIGKILL to check what a killed command leaves behind.

`kill_point("release.encrypted")` does nothing unless `LMSYNTH_KILL_AT` names that point; then the process
kills itself with SIGKILL on the spot, exactly as `kill -9` would (no cleanup, no `finally`). With
`LMSYNTH_KILL_AT=name@N` it kills at the N-th pass of the point (1-based).
"""

from __future__ import annotations

import os
import signal

from lmsynth import constants


_passes: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process here when `LMSYNTH_KILL_AT` names this point (a no-op otherwise)."""
    wanted = constants.kill_at()
    if wanted is None:
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
