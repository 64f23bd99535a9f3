"""No process lmsynth starts holds a secret it does not need, and only `constants` reads the environment.

The real commands run as subprocesses with every secret set (passphrase, Hub and ModelScope tokens, the
OpenAI key); while they run, every descendant's `/proc/<pid>/environ` is read. git's children are caught by
a `reference-transaction` hook in the local hub's repository and gpg's by a `gpg` wrapper first on PATH,
each dumping its own environment, since they may live too briefly for the walk to see them.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmsynth import constants
from tests.environ_watch import ROOT, SECRETS, leaks, reads_proc, run_watching, secrets_env
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


TIMEOUT_S = 600


@reads_proc
def test_no_descendant_of_lmsynth_run_holds_a_secret(tmp_path: Path) -> None:
    """The watchdog, distilabel's forkserver (a run of several windows), resource tracker and step processes.

    A run's real vLLM server and a `--ray` run's whole cluster are watched by the tests that start them anyway:
    tests/pipeline/test_engine_lifecycle.py and tests/scale/test_ray_engines.py.
    """
    (tmp_path / "bin").mkdir()
    prep = write_prepared(tmp_path / "prepared", [make_record(i) for i in range(8)])
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2, sleep_s=0.1, window=4)
    argv = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")]
    code, output, watch = run_watching(argv, cwd=tmp_path, env=secrets_env(tmp_path), timeout_s=TIMEOUT_S)
    assert code == 0, output
    assert leaks(watch.own) == []  # a run needs none of them: held in its memory only
    assert len(watch.seen) >= 4, watch.commands()
    assert any("multiprocessing.forkserver" in cmd for cmd in watch.commands()), watch.commands()
    assert watch.leaked() == {}


def _environ_of(pid: int) -> bytes:
    """A child's environment; empty for a moment after a vfork's parent resumes (the kernel sets it up later)."""
    deadline = time.monotonic() + 10
    while not (env := Path(f"/proc/{pid}/environ").read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return env


class TestServerEnvironment:
    """The vLLM server: a real child (a stand-in module for the server), its environment read from /proc."""

    def _start(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, *, offline: bool) -> bytes:
        from lmsynth.llm import VllmModelConfig
        from lmsynth.pipeline.engines import servers as engines

        for name, value in SECRETS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("PYTHONPATH", str(ROOT))
        monkeypatch.setattr(engines, "SERVER_MODULE", "tests.sleeper")
        monkeypatch.setattr(constants, "_held", {})
        constants.hold_secrets()  # as the CLI does when a command starts
        server = engines.EngineServer("m", VllmModelConfig(model=model, offline=offline), log_path=tmp_path / "m.log")
        server.start()
        try:
            return _environ_of(server.proc.pid)
        finally:
            server.stop(grace_s=5)
            constants.restore_secrets()

    def test_a_local_model_folder_gets_no_secret(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "model").mkdir()
        env = self._start(tmp_path, monkeypatch, str(tmp_path / "model"), offline=False)
        assert leaks(env) == []
        assert b"VLLM_NO_USAGE_STATS=1" in env

    def test_a_hub_model_it_downloads_gets_the_hub_token_only(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env = self._start(tmp_path, monkeypatch, "org/some-model", offline=False)
        assert leaks(env) == ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]

    def test_an_offline_hub_model_gets_no_secret(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        env = self._start(tmp_path, monkeypatch, "org/some-model", offline=True)
        assert leaks(env) == []


def test_secrets_are_held_then_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "_held", {})
    constants.hold_secrets(keep=constants.HF_TOKEN_ENVS)
    try:
        assert sorted(n for n in SECRETS if n in os.environ) == ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
        assert constants.passphrase_from_env() == SECRETS["LMSYNTH_PASSPHRASE"]
        assert constants.modelscope_token_from_env() == SECRETS["MODELSCOPE_API_TOKEN"]
        assert leaks("\0".join(f"{k}={v}" for k, v in constants.child_env().items()).encode()) == []
        assert set(constants.secret_values_from_env()) == set(SECRETS.values())
    finally:
        constants.restore_secrets()
    assert {n: os.environ.get(n) for n in SECRETS} == SECRETS


def test_only_constants_reads_or_writes_the_environment() -> None:
    """`os.environ` / `os.getenv` / `os.putenv` appear in `lmsynth/constants.py` only."""
    offenders = []
    for path in sorted((ROOT / "lmsynth").rglob("*.py")):
        if path.name == "constants.py" and path.parent.name == "lmsynth":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "putenv", "unsetenv"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "os":
                if any(a.name in {"environ", "getenv", "putenv", "unsetenv"} for a in node.names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# A `lmsynth run` whose last step in the main process fails with an error lmsynth does not map (after
# distilabel, which installs rich's traceback handler with show_locals at import, has run the pipeline).
_FAILING_RUN = """
import sys
import lmsynth.pipeline.executor.window as window

def failing_check(*args, **kwargs):
    planted_local = "planted-" + "local-value-6e2f"
    raise RuntimeError("an unexpected failure")

window._check_rows = failing_check
from lmsynth.cli import main
sys.argv = ["lmsynth", *sys.argv[1:]]
main()
"""


def test_a_failing_run_prints_no_local_variables(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prepared", [make_record(i) for i in range(2)])
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2)
    argv = ["run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LMSYNTH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", _FAILING_RUN, *argv], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 1
    assert "RuntimeError: an unexpected failure" in proc.stderr  # the traceback itself is still there
    assert "planted-local-value-6e2f" not in proc.stderr + proc.stdout
    assert "locals" not in proc.stderr


def test_the_openai_key_reaches_the_step_processes_that_call_the_server(tmp_path: Path) -> None:
    """The one secret a run's step processes need, for a `backend: openai` model: held, then handed on."""
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_llm import _Server

    _Server.fail, _Server.seen = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prompt = constants.PIPELINES_DIR / "prompts" / "translate_en_ja.txt"
    pipe = tmp_path / "openai.yaml"
    url = f"http://127.0.0.1:{server.server_port}/v1"
    pipe.write_text(
        "name: served\nbatch_size: 2\nmodels:\n"
        f"  o: {{backend: openai, model: served, base_urls: ['{url}'], backoff_s: 0}}\n"
        f"translate: {{model: o, prompt: {prompt}}}\n"
        "generate: {model: o, sampling: {n: 1, max_tokens: 20}}\n"
    )
    prep = write_prepared(tmp_path / "prepared", [make_record(i) for i in range(2)])
    argv = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")]
    try:
        proc = subprocess.run(argv, env=secrets_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert _Server.seen and {auth for *_, auth in _Server.seen} == {f"Bearer {SECRETS['OPENAI_API_KEY']}"}
