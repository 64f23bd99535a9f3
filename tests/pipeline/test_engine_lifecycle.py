"""A managed vLLM server under `lmsynth run`: nothing survives Ctrl-C, SIGTERM or a SIGKILL of lmsynth itself,
the rerun after a SIGKILL resumes from the cache, and no process of a run (its server included) holds a secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmsynth.pipeline.engines.servers import SERVER_MODULE
from lmsynth.procs import descendants, process_identity
from lmsynth.records import iter_synth_records
from tests.environ_watch import EnvironWatch, leaks, reads_proc, secrets_env
from tests.pipeline.factories import make_record, write_prepared


ROWS = 480
PIPELINE = """\
name: lifecycle
batch_size: 16
models:
  tiny: {{backend: vllm, model: {model}, dtype: float32, max_model_len: 512, kv_cache_memory_bytes: 67108864,
          enforce_eager: true, offline: {offline}}}
  t: {{backend: fake, replies: ["訳 {{last_line}}"]}}
translate: {{model: t}}
generate: {{model: tiny, sampling: {{n: 2, max_tokens: 48, temperature: 0.8}}}}
"""


def start_run(tmp_path: Path, model_dir: Path, log_name: str, *, secrets: bool = False) -> subprocess.Popen:
    pipe = tmp_path / "p.yaml"
    # With secrets: every secret planted, and a model that is not offline, so that only its being a local folder
    # keeps the Hub token from its server.
    pipe.write_text(PIPELINE.format(model=model_dir, offline=str(not secrets).lower()))
    prep = tmp_path / "prep"
    if not prep.exists():
        write_prepared(prep, [make_record(i) for i in range(ROWS)])
    env = secrets_env(tmp_path) if secrets else {**os.environ, "LMSYNTH_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")]
    # Its own session, as a shell job would be: a killpg of it is what Ctrl-C in a terminal sends.
    log = (tmp_path / log_name).open("wb")
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until_generating(proc: subprocess.Popen, tmp_path: Path, *, timeout: float = 400) -> dict[int, int]:
    """Wait for the server and a finished generate unit; return the run's whole process tree then."""
    deadline = time.time() + timeout
    units = tmp_path / "cache" / "generate"
    while time.time() < deadline:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        tree = descendants(proc.pid)
        if any(SERVER_MODULE in cmdline(p) for p in tree) and units.is_dir() and any(units.rglob("*.json")):
            return {**descendants(proc.pid), proc.pid: process_identity(proc.pid)[1]}
        time.sleep(0.2)
    raise AssertionError("the run never started generating")


def survivors(tree: dict[int, int], *, within: float) -> list[str]:
    deadline = time.time() + within
    while True:
        left = [p for p, t in tree.items() if (ident := process_identity(p)) is not None and ident[1] == t]
        left = [p for p in left if Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] != "Z"]  # not zombies
        if not left or time.time() > deadline:
            return [f"{p}: {cmdline(p)[:120]}" for p in left]
        time.sleep(0.2)


@pytest.mark.engine
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_stops_server_engine_and_workers(tmp_path: Path, tiny_model_dir: Path, engine_env, how) -> None:
    proc = start_run(tmp_path, tiny_model_dir, "first.log")
    tree = wait_until_generating(proc, tmp_path)
    assert any(SERVER_MODULE in cmdline(p) for p in tree) and len(tree) >= 5  # main, workers, server, watchdog
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's foreground group: lmsynth and its workers
    else:
        os.kill(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=180)
    assert code != 0 and not (tmp_path / "out" / "run.json").exists()
    assert survivors(tree, within=30) == []
    log = (tmp_path / "out" / "logs" / "vllm-tiny.log").read_text()
    assert SERVER_MODULE in log.splitlines()[0]


@pytest.mark.engine
@pytest.mark.timeout(1500)
@reads_proc
def test_sigkill_of_lmsynth_leaves_nothing_and_the_rerun_resumes(
    tmp_path: Path, tiny_model_dir: Path, engine_env
) -> None:
    """Both runs are started with every secret (tests/environ_watch.py) and watched: the real vLLM server of a
    local model folder, like every other descendant, holds none."""
    proc = start_run(tmp_path, tiny_model_dir, "first.log", secrets=True)
    with EnvironWatch(proc.pid) as first:
        tree = wait_until_generating(proc, tmp_path)
        os.kill(proc.pid, signal.SIGKILL)  # lmsynth alone: its children are not signalled by anyone but the watchdog
        proc.wait()
    assert survivors(tree, within=60) == []
    done = {p: p.read_bytes() for p in (tmp_path / "cache" / "generate").rglob("*.json")}
    assert done and len(done) < ROWS // 16
    rerun = start_run(tmp_path, tiny_model_dir, "rerun.log", secrets=True)
    with EnvironWatch(rerun.pid) as second:
        assert rerun.wait(timeout=1200) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    ids = [r.conversation_id for r in iter_synth_records(tmp_path / "out")]
    assert ids == [f"c{i}" for i in range(ROWS)]
    for path, content in done.items():  # finished units were reused, not regenerated
        assert path.read_bytes() == content
    for watch in (first, second):
        assert any(SERVER_MODULE in cmd for cmd in watch.commands()), watch.commands()
        assert watch.leaked() == {}
        assert leaks(watch.own) == []
