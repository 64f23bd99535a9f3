"""Child processes that die with their parent: a watchdog over the process tree.

`lmsynth run` starts distilabel workers, a multiprocessing manager, vLLM servers and their EngineCore
processes. When the main process is killed with SIGKILL nothing of it runs again, so cleanup must live in
another process: `reap_on_death()` starts a small watchdog (`python -m lmsynth.procs`, in its own session so
a Ctrl-C or a `killpg` of the run does not reach it) that snapshots the main process's descendants twice a
second and, when the main process is gone without having written `stop` to the watchdog's stdin, sends
SIGTERM to every process it has seen in the tree that is still the same process (pid and start time), then
SIGKILL to what is left after a grace period. Seen, not last seen: a killer that ends the children first
(Ray kills an actor's children, then the actor) orphans the grandchildren before the main process is gone,
and a last snapshot would no longer hold them. A parent-death signal (prctl PR_SET_PDEATHSIG) would not do:
it must be set inside each child, and distilabel's pool, the multiprocessing manager and vLLM's EngineCore
are children lmsynth does not start itself. Linux only (it reads /proc); elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from lmsynth import constants


SNAPSHOT_INTERVAL_S = 0.5
GRACE_S = 10.0
STOP_WORD = b"stop\n"
_PROC = Path("/proc")


def process_identity(pid: int) -> tuple[int, int] | None:
    """`(parent pid, start time in clock ticks)` of `pid`, or None when it is gone, a zombie, or not on Linux."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of `root`: pid → start time (so a reused pid is never mistaken for it)."""
    parents: dict[int, tuple[int, int]] = {}
    for entry in _PROC.iterdir() if _PROC.is_dir() else []:
        if entry.name.isdigit():
            ident = process_identity(int(entry.name))
            if ident is not None:
                parents[int(entry.name)] = ident
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = parents[pid][1]
            todo.extend(children.get(pid, []))
    return found


def signal_alive(procs: dict[int, int], sig: int) -> list[int]:
    """Send `sig` to each process of `procs` that is still the same process; return those signalled."""
    hit = []
    for pid, started in procs.items():
        ident = process_identity(pid)
        if ident is None or ident[1] != started:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            hit.append(pid)
    return hit


def terminate(procs: dict[int, int], *, grace_s: float = GRACE_S) -> None:
    """SIGTERM `procs`, wait up to `grace_s` for them to exit, then SIGKILL the rest."""
    signal_alive(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and signal_alive(procs, 0):
        time.sleep(0.1)
    signal_alive(procs, signal.SIGKILL)


@contextlib.contextmanager
def reap_on_death(*, grace_s: float = GRACE_S, detached: bool = False) -> Iterator[None]:
    """While the block runs, a watchdog kills this process's descendants if this process dies.

    On a normal exit of the block the watchdog is told to stop. On an exception it stays armed until this
    process exits, and then removes whatever the unwinding left behind. `detached` makes the watchdog a
    grandchild that a shell leaves behind, so it is no child of this process: Ray SIGKILLs the children of
    a killed actor, and the watchdog must outlive them to end their own children (vLLM's EngineCore).
    """
    if not _PROC.is_dir():
        yield
        return
    argv = [sys.executable, "-m", "lmsynth.procs", str(os.getpid()), str(grace_s)]
    if detached:  # a background job's stdin is /dev/null unless redirected: hand it the pipe through fd 3
        argv = ["/bin/sh", "-c", 'exec 3<&0; "$@" <&3 3<&- &', "sh", *argv]
    watchdog = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        start_new_session=True,
        env=constants.child_env(PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
    )
    ok = False
    try:
        yield
        ok = True
    finally:
        if ok:
            with contextlib.suppress(OSError):
                watchdog.stdin.write(STOP_WORD)
                watchdog.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=5)
        else:
            # Keep the pipe open: the watchdog acts when this process is gone. Reap it then if we still can.
            threading.Thread(target=watchdog.wait, daemon=True).start()


def _watch(parent: int, grace_s: float) -> int:
    """The watchdog's loop: snapshot `parent`'s tree until stdin says stop or closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    tree: dict[int, int] = {}
    done = threading.Event()
    words: list[bytes] = []

    def _read() -> None:
        # `stop`, or EOF once no process holds the pipe open. Unbuffered: a thread blocked in sys.stdin's
        # buffered reader holds its lock, and the interpreter's exit, once the parent is gone, then dies with
        # "Fatal Python error: could not acquire lock for <stdin>" on the run's stderr.
        words.append(os.read(0, len(STOP_WORD)))
        done.set()

    threading.Thread(target=_read, daemon=True).start()
    # The pipe alone cannot tell: children forked by the parent hold its write end open after it dies.
    while not done.is_set() and process_identity(parent) is not None:
        tree = {pid: t for pid, t in tree.items() if (ident := process_identity(pid)) and ident[1] == t}
        tree.update((pid, t) for pid, t in descendants(parent).items() if pid != me)
        done.wait(SNAPSHOT_INTERVAL_S)
    if done.is_set() and words and words[0].startswith(STOP_WORD.strip()):
        return 0
    # The parent is gone (or exiting): its descendants, now orphans, go too, children of theirs included.
    for pid in list(tree):
        tree.update(descendants(pid))
    terminate(tree, grace_s=grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(_watch(int(sys.argv[1]), float(sys.argv[2])))
