"""Ctrl-C and SIGTERM of `lmsynth run`: exit 130 / 143 quickly, one line, no thread traceback, nothing left.

Real signals to a real run of the installed `lmsynth` command: a terminal's Ctrl-C goes to the whole
foreground process group (lmsynth and its workers), `kill` to lmsynth alone, and a SIGTERM may go to the whole
group too (`timeout`, `kill -- -PGID`, systemd and Slurm stopping a job); at start-up (imports), during
translation and during judging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lmsynth.procs import descendants
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


INTERRUPTED = "Error: interrupted; nothing was left running"
LMSYNTH = Path(sys.executable).with_name("lmsynth")  # the console script: its children re-import it


def _catching_sigterm(pid: int) -> list[str]:
    """Descendants of `pid` that handle SIGTERM themselves (multiprocessing's terminate cannot end them)."""
    caught = []
    for child in descendants(pid):
        try:
            status = Path(f"/proc/{child}/status").read_text()
            mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt")), 16)
            if mask & (1 << (signal.SIGTERM - 1)):
                caught.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:
            continue
    return caught


def _alive(session: int) -> list[str]:
    """Processes of `session` that still run (zombies waiting for init aside)."""
    ps = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-s", str(session)], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if line.split()[1][0] != "Z"]


def _units(cache: Path, stage: str) -> bool:
    return (cache / stage).is_dir() and any((cache / stage).rglob("*.json"))


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("sig", "to", "when", "code"),
    [
        (signal.SIGINT, "group", "starting", 130),  # Ctrl-C: the terminal signals the whole foreground group
        (signal.SIGINT, "group", "translate", 130),
        (signal.SIGINT, "group", "judge", 130),
        (signal.SIGTERM, "lmsynth", "starting", 143),
        (signal.SIGTERM, "lmsynth", "translate", 143),
        (signal.SIGTERM, "lmsynth", "judge", 143),
        (signal.SIGTERM, "group", "translate", 143),
        (signal.SIGTERM, "group", "judge", 143),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_interrupted_run_says_so_in_one_line_and_leaves_nothing(
    tmp_path: Path, sig: signal.Signals, to: str, when: str, code: int
) -> None:
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(12)], [make_record(90)])
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2, sleep_s=0.1, window=4)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [str(LMSYNTH), "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")],
        env={**os.environ, "LMSYNTH_CACHE": str(cache), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        if when == "starting":
            # Still importing, but past the interpreter's own start (no program can handle a signal before it
            # runs): CPU time, not wall time, so that a loaded machine does not move the moment.
            while proc.poll() is None and time.monotonic() < deadline and _cpu_s(proc.pid) < 0.5:
                time.sleep(0.02)
        else:
            while proc.poll() is None and time.monotonic() < deadline and not _units(cache, when):
                time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before `{when}`"
        if when != "starting":
            # distilabel ends its idle step processes with `Pool.terminate` (SIGTERM): one that handles SIGTERM
            # in Python can miss it (delivered to another of its threads) and hang the run's teardown for good.
            assert _catching_sigterm(proc.pid) == []
        if to == "group":  # every worker gets it too: one that waited for a task dies holding the pool's lock
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # a failed check above: the run and its workers go with the test
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    took = time.monotonic() - signalled
    assert proc.returncode == code, err[-3000:]
    assert err.strip().splitlines() == [INTERRUPTED], err[-3000:]
    print(f"\n{sig.name} to {to} during {when}: exit {code} after {took:.1f} s")
    gone_by = time.monotonic() + 2  # distilabel's workers exit on their own once their manager is gone
    while (left := _alive(proc.pid)) and time.monotonic() < gone_by:
        time.sleep(0.1)
    if left:  # fail, but take them with the test
        os.killpg(proc.pid, signal.SIGKILL)
    assert left == []
    assert not (tmp_path / "out" / "run.json").exists()
