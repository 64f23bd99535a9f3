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

import psutil
import pytest

from lmsynth import constants
from lmsynth.pipeline.engines.servers import SERVER_MODULE
from tests import engine_fixtures
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "LMSYNTH_PASSPHRASE": "planted-passphrase-5b1c9e-鍵",
    "HF_TOKEN": "hf_planted_token_77aa01",
    "HUGGING_FACE_HUB_TOKEN": "hf_planted_legacy_token_42bb",
    "MODELSCOPE_API_TOKEN": "ms_planted_token_33cc02",
    "OPENAI_API_KEY": "sk-planted-openai-99dd03",
}
TIMEOUT_S = 600

# The shared engine fixtures (one tiny model per session, see tests/engine_fixtures.py).
engine_env = engine_fixtures.engine_env
tiny_model_dir = engine_fixtures.tiny_model_dir


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        **SECRETS,
        "PYTHONPATH": str(ROOT),
        "LMSYNTH_CACHE": str(root / "cache"),
        "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }


def _leaks(environ: bytes) -> list[str]:
    """The names of the planted secrets whose value `environ` holds."""
    return [name for name, value in SECRETS.items() if value.encode() in environ]


def _run_watching(
    argv: list[str], *, cwd: Path, env: dict[str, str]
) -> tuple[int, str, dict[int, tuple[str, bytes]], bytes]:
    """Run `argv`; while it runs, read the environment of every descendant.

    Returns the exit code, the output, each descendant's command line and environment, and the command's own
    environment as last read (late in its life: the secrets it was started with are blanked at its start).
    """
    log = cwd / "command.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        seen: dict[int, tuple[str, bytes]] = {}
        own = b""
        deadline = time.monotonic() + TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
                own = Path(f"/proc/{proc.pid}/environ").read_bytes()
            except (psutil.NoSuchProcess, OSError):
                break
            for child in children:
                try:
                    cmd = " ".join(child.cmdline())[:120]
                    if seen.get(child.pid, ("",))[0] == cmd:
                        continue
                    # Again after an exec: a child first seen between fork and exec had its parent's command.
                    seen[child.pid] = (cmd, Path(f"/proc/{child.pid}/environ").read_bytes())
                except (OSError, psutil.Error):
                    continue
            # Each walk reads every process of the machine; the processes walked for live for seconds (the
            # brief ones, git and gpg, dump their own environment), so a walk every 50 ms sees them all
            # without taking a quarter of a core from the run it watches.
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
    return code, log.read_text(errors="replace"), seen, own


def _dump_script(path: Path, dump: Path, then: str) -> None:
    path.write_text(f'#!/bin/sh\ncat /proc/$$/environ >> "{dump}"\nprintf "\\n--\\n" >> "{dump}"\n{then}\n')
    path.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(
    "extra",
    [pytest.param([], id="local"), pytest.param(["--ray", "--ray-cpus", "2"], id="ray", marks=pytest.mark.ray)],
)
def test_no_descendant_of_lmsynth_run_holds_a_secret(tmp_path: Path, extra: list[str]) -> None:
    """Local: the watchdog, distilabel's forkserver, resource tracker and step processes; Ray: its whole cluster."""
    (tmp_path / "bin").mkdir()
    prep = write_prepared(tmp_path / "prepared", [make_record(i) for i in range(8)])
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2, sleep_s=0.3)
    argv = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")]
    env = {**_env(tmp_path), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    code, output, seen, own = _run_watching([*argv, *extra], cwd=tmp_path, env=env)
    assert code == 0, output
    assert _leaks(own) == []  # a run needs none of them: held in its memory only
    assert len(seen) >= (10 if extra else 4), [cmd for cmd, _ in seen.values()]
    leaked = {f"{pid} {cmd}": _leaks(env) for pid, (cmd, env) in seen.items() if _leaks(env)}
    assert leaked == {}


ENGINE_PIPELINE = """\
name: served
batch_size: 4
models:
  tiny: {{backend: vllm, model: {model}, dtype: float32, max_model_len: 512, kv_cache_memory_bytes: 67108864,
          enforce_eager: true, offline: false}}
  t: {{backend: fake, replies: ["訳 {{last_line}}"]}}
translate: {{model: t}}
generate: {{model: tiny, sampling: {{n: 1, max_tokens: 8}}}}
"""


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_a_real_vllm_server_of_a_local_model_holds_no_secret(tmp_path: Path, tiny_model_dir: Path, engine_env) -> None:
    """`lmsynth run` with a real vLLM server (and its EngineCore, if any) for a local model folder."""
    (tmp_path / "bin").mkdir()
    pipe = tmp_path / "p.yaml"
    pipe.write_text(ENGINE_PIPELINE.format(model=tiny_model_dir))
    prep = write_prepared(tmp_path / "prepared", [make_record(i) for i in range(4)])
    argv = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")]
    code, output, seen, own = _run_watching(argv, cwd=tmp_path, env=_env(tmp_path))
    assert code == 0, output
    servers = [pid for pid, (cmd, _) in seen.items() if SERVER_MODULE in cmd]
    assert servers, [cmd for cmd, _ in seen.values()]
    leaked = {f"{pid} {cmd}": _leaks(env) for pid, (cmd, env) in seen.items() if _leaks(env)}
    assert leaked == {}
    assert _leaks(own) == []


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
        assert _leaks(env) == []
        assert b"VLLM_NO_USAGE_STATS=1" in env

    def test_a_hub_model_it_downloads_gets_the_hub_token_only(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env = self._start(tmp_path, monkeypatch, "org/some-model", offline=False)
        assert _leaks(env) == ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]

    def test_an_offline_hub_model_gets_no_secret(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        env = self._start(tmp_path, monkeypatch, "org/some-model", offline=True)
        assert _leaks(env) == []


def test_secrets_are_held_then_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "_held", {})
    constants.hold_secrets(keep=constants.HF_TOKEN_ENVS)
    try:
        assert sorted(n for n in SECRETS if n in os.environ) == ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
        assert constants.passphrase_from_env() == SECRETS["LMSYNTH_PASSPHRASE"]
        assert constants.modelscope_token_from_env() == SECRETS["MODELSCOPE_API_TOKEN"]
        assert _leaks("\0".join(f"{k}={v}" for k, v in constants.child_env().items()).encode()) == []
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
from lmsynth.cli.app import main
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
        proc = subprocess.run(argv, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    assert _Server.seen and {auth for *_, auth in _Server.seen} == {f"Bearer {SECRETS['OPENAI_API_KEY']}"}
