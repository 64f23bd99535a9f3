"""Children die with their parent: the watchdog of `lmsynth.procs` after a SIGKILL of the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmsynth.procs import descendants, process_identity


PARENT = """\
import os, subprocess, sys, time
from lmsynth.procs import reap_on_death

with reap_on_death(grace_s=2, detached=sys.argv[2] == "detached"):
    # A child that ignores SIGTERM (only SIGKILL ends it) with a grandchild of its own.
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"])
    # A forked child, as distilabel's pool makes: it holds every inherited pipe open, the watchdog's too.
    forked = os.fork()
    if forked == 0:
        time.sleep(600)
        os._exit(0)
    print(child.pid, forked, flush=True)
    if sys.argv[1] == "leave":
        time.sleep(600)
print("left the block", flush=True)
time.sleep(1)
"""


def start_parent(tmp_path: Path, mode: str, *, detached: bool = False) -> tuple[subprocess.Popen, dict[int, int]]:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, "detached" if detached else "attached"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    child, forked = map(int, proc.stdout.readline().split())
    deadline = time.time() + 30
    tree: dict[int, int] = {}
    while time.time() < deadline and len(tree) < 3:  # the child, its grandchild and the forked child
        tree = descendants(child) | {p: process_identity(p)[1] for p in (child, forked)}
        time.sleep(0.1)
    assert len(tree) >= 3
    return proc, tree


def alive(tree: dict[int, int]) -> list[int]:
    return [p for p, t in tree.items() if (ident := process_identity(p)) is not None and ident[1] == t]


def alive_after(tree: dict[int, int], within: float = 30.0) -> list[int]:
    """What of `tree` is still running once it has all gone, or `within` seconds have passed."""
    deadline = time.time() + within
    while time.time() < deadline and alive(tree):
        time.sleep(0.2)
    return alive(tree)


def children_of(pid: int) -> list[int]:
    return [p for p in descendants(pid) if (ident := process_identity(p)) is not None and ident[0] == pid]


@pytest.mark.timeout(90)
def test_sigkill_of_the_parent_kills_its_whole_tree(tmp_path: Path) -> None:
    proc, tree = start_parent(tmp_path, "leave")
    time.sleep(1.0)  # one watchdog snapshot
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive_after(tree) == [], "children outlived a SIGKILL of their parent"


@pytest.mark.timeout(90)
def test_a_normal_exit_disarms_the_watchdog(tmp_path: Path) -> None:
    proc, tree = start_parent(tmp_path, "return")
    assert proc.stdout.readline().strip() == "left the block"
    assert proc.wait(timeout=30) == 0
    time.sleep(1.0)
    try:
        assert sorted(alive(tree)) == sorted(tree), "the watchdog killed children after a normal exit"
    finally:
        for pid in alive(tree):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(90)
def test_a_detached_watchdog_outlives_a_sigkill_of_every_child(tmp_path: Path) -> None:
    """What Ray does to a killed actor: the parent and all its direct children die at once; grandchildren go too."""
    proc, tree = start_parent(tmp_path, "leave", detached=True)
    time.sleep(1.0)  # one watchdog snapshot
    children = children_of(proc.pid)
    assert not any("lmsynth.procs" in Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in children)
    os.kill(proc.pid, signal.SIGKILL)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert alive_after(tree) == [], "grandchildren outlived a SIGKILL of the parent and its children"


@pytest.mark.timeout(90)
def test_grandchildren_orphaned_before_the_parent_dies_still_go(tmp_path: Path) -> None:
    """Ray's order for a killed actor can be children first, parent later: by then the grandchildren are no
    longer in the parent's tree, and the watchdog must remember them from earlier snapshots."""
    proc, tree = start_parent(tmp_path, "leave", detached=True)
    time.sleep(1.0)  # one watchdog snapshot with the whole tree
    children = children_of(proc.pid)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    time.sleep(2.0)  # several snapshots in which the orphaned grandchild is no descendant of the parent
    orphans = {p: t for p, t in tree.items() if p not in children}
    assert alive(orphans), "the grandchild should still be running before the parent dies"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert alive_after(tree) == [], "grandchildren orphaned before the parent's death outlived it"


@pytest.mark.timeout(60)
def test_the_watchdog_exits_cleanly_while_its_pipe_is_still_held_open() -> None:
    """Forked children keep the watchdog's pipe open after the parent died: its exit must not trip on stdin."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "lmsynth.procs", str(parent.pid), "1"],
        stdin=subprocess.PIPE,  # held open by this test, as a forked child of the parent would
        stderr=subprocess.PIPE,
        env=env,
    )
    time.sleep(1.0)  # the watchdog is up, its reader waiting on the pipe
    parent.kill()
    parent.wait()
    code = watchdog.wait(timeout=30)  # the pipe still open
    err = watchdog.stderr.read()
    watchdog.stdin.close()
    assert code == 0 and err == b"", err.decode(errors="replace")
