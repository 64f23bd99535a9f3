"""Plant every secret in a command's environment, then read the environment of each of its descendants.

Used by the secrets tests (tests/test_secrets.py) and by the tests whose real runs are worth watching while
they run anyway (a real vLLM server, a Ray cluster): a run's process tree is the same whatever a test does to
it afterwards. git's and gpg's children live too briefly for a walk to see; the tests catch them with a
`reference-transaction` hook and a `gpg` wrapper that dump their own environment (`dump_script`).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import psutil
import pytest


ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "LMSYNTH_PASSPHRASE": "planted-passphrase-5b1c9e-鍵",
    "HF_TOKEN": "hf_planted_token_77aa01",
    "HUGGING_FACE_HUB_TOKEN": "hf_planted_legacy_token_42bb",
    "MODELSCOPE_API_TOKEN": "ms_planted_token_33cc02",
    "OPENAI_API_KEY": "sk-planted-openai-99dd03",
}


# Every watch reads `/proc/<pid>/environ`.
reads_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")


def secrets_env(root: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with every secret, a cache under `root`, `root/bin` first."""
    base = dict(os.environ) if base is None else base
    return {
        **base,
        **SECRETS,
        "PYTHONPATH": str(ROOT),
        "LMSYNTH_CACHE": str(root / "cache"),
        "PATH": f"{root / 'bin'}{os.pathsep}{base['PATH']}",
    }


def leaks(environ: bytes) -> list[str]:
    """The names of the planted secrets whose value `environ` holds."""
    return [name for name, value in SECRETS.items() if value.encode() in environ]


def dump_script(path: Path, dump: Path, then: str) -> None:
    """A shell script that appends its own environment to `dump`, then runs `then`."""
    path.write_text(f'#!/bin/sh\ncat /proc/$$/environ >> "{dump}"\nprintf "\\n--\\n" >> "{dump}"\n{then}\n')
    path.chmod(0o755)


class EnvironWatch:
    """A thread that reads the environment of every descendant of `pid` until `stop()`.

    `seen` maps each descendant's pid to its command line and environment; `own` is `pid`'s own environment
    as last read (late in its life: the secrets a command was started with are blanked at its start).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen: dict[int, tuple[str, bytes]] = {}
        self.own = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._walk, name="environ-watch", daemon=True)

    def __enter__(self) -> EnvironWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def leaked(self, *, besides: str = "") -> dict[str, list[str]]:
        """`pid command` → the secrets that descendant held; none for descendants running `besides`."""
        return {
            f"{pid} {cmd}": found for pid, (cmd, env) in self.seen.items() if (found := leaks(env)) and cmd != besides
        }

    def commands(self) -> list[str]:
        return [cmd for cmd, _ in self.seen.values()]

    def _walk(self) -> None:
        # Each walk reads every process of the machine; the processes walked for live for seconds (the brief
        # ones, git and gpg, dump their own environment), so a walk every 50 ms sees them all without taking
        # a quarter of a core from the run it watches.
        while not self._stop.wait(0.05):
            try:
                children = psutil.Process(self.pid).children(recursive=True)
                own = Path(f"/proc/{self.pid}/environ").read_bytes()
                self.own = own or self.own  # empty once it has exited, before it is reaped
            except (psutil.NoSuchProcess, OSError):
                return
            for child in children:
                try:
                    cmd = " ".join(child.cmdline())[:120]
                    if self.seen.get(child.pid, ("",))[0] == cmd:
                        continue
                    # Again after an exec: a child first seen between fork and exec had its parent's command.
                    self.seen[child.pid] = (cmd, Path(f"/proc/{child.pid}/environ").read_bytes())
                except (OSError, psutil.Error):
                    continue


def run_watching(
    argv: list[str], *, cwd: Path, env: dict[str, str], timeout_s: float = 600
) -> tuple[int, str, EnvironWatch]:
    """Run `argv` to its end (killed after `timeout_s`) under an `EnvironWatch`; its exit code and output."""
    log = cwd / "command.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with EnvironWatch(proc.pid) as watch:
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    return code, log.read_text(errors="replace"), watch
