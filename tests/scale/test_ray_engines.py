"""Under `--ray` a served model lives in one Ray actor: the run goes through it, and nothing of it outlives
the run or a `ray.kill` of the actor."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from lmsynth.pipeline.engines.ray_actors import RayEngineServer
from lmsynth.pipeline.engines.servers import SERVER_MODULE
from lmsynth.pipeline.executor.on_ray import RayOptions, ray_cluster
from lmsynth.procs import descendants, process_identity
from lmsynth.records import iter_synth_records
from tests import engine_fixtures
from tests.environ_watch import EnvironWatch, leaks, reads_proc, secrets_env
from tests.pipeline.factories import make_record, write_prepared


pytestmark = [pytest.mark.ray, pytest.mark.engine]

PIPELINE = """\
name: ray-served
batch_size: 4
models:
  tiny: {{backend: vllm, model: {model}, dtype: float32, max_model_len: 512, kv_cache_memory_bytes: 67108864,
          enforce_eager: true, max_num_seqs: 8}}
  t: {{backend: fake, replies: ["訳 {{last_line}}"]}}
translate: {{model: t}}
generate: {{model: tiny, sampling: {{n: 1, max_tokens: 8, temperature: 0.8}}}}
"""


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def server_tree(model_dir: Path) -> dict[int, int]:
    """The server processes serving `model_dir` (this test's own model) and their children (a GPU's EngineCore)."""
    tree: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and SERVER_MODULE in (line := cmdline(int(entry.name))) and str(model_dir) in line:
            ident = process_identity(int(entry.name))
            if ident is not None:
                tree |= {int(entry.name): ident[1], **descendants(int(entry.name))}
    return tree


def survivors(tree: dict[int, int], *, within: float) -> list[str]:
    deadline = time.time() + within
    while True:
        left = [p for p, t in tree.items() if (ident := process_identity(p)) is not None and ident[1] == t]
        if not left or time.time() > deadline:
            return [f"{p}: {cmdline(p)[:120]}" for p in left]
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_ray_run_serves_its_model_from_an_actor(
    tmp_path: Path, tiny_model_dir: Path, engine_env, ray_env: RayOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmsynth.pipeline.run import run_pipeline

    served: list[tuple[str, str, dict[int, int]]] = []
    ready = RayEngineServer.wait_healthy

    def _spy(self: RayEngineServer, **kw) -> None:
        ready(self, **kw)
        import ray

        served.append((self.url, ray.util.get_node_ip_address(), server_tree(tiny_model_dir)))

    monkeypatch.setattr(RayEngineServer, "wait_healthy", _spy)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(model=tiny_model_dir))
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(6)])
    result = run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache", ray=ray_env)

    assert len(served) == 1  # one actor for the model, for the whole run
    url, node_ip, tree = served[0]
    assert urlparse(url).hostname == node_ip and url.endswith("/v1")  # the node's address, as the stages saw it
    ids = [r.conversation_id for r in iter_synth_records(tmp_path / "out")]
    assert result.records == 6 and ids == [f"c{i}" for i in range(6)]
    assert all(r.synthesized_assistant_responses for r in iter_synth_records(tmp_path / "out"))
    log = (tmp_path / "out" / "logs" / "vllm-tiny.log").read_text()  # copied back from the actor's node
    assert SERVER_MODULE in log.splitlines()[0] and f"--host {node_ip}" in log.splitlines()[0]
    assert survivors(tree, within=30) == []
    assert server_tree(tiny_model_dir) == {}


@pytest.mark.timeout(600)
def test_ray_kill_of_the_actor_leaves_no_server(
    tmp_path: Path, tiny_model_dir: Path, engine_env, ray_env: RayOptions
) -> None:
    import ray

    model = engine_fixtures.tiny_vllm_config(tiny_model_dir)
    with ray_cluster(ray_env):
        server = RayEngineServer("tiny", model, log_path=tmp_path / "vllm-tiny.log")
        server.start()
        server.wait_healthy(timeout_s=400)
        tree = server_tree(tiny_model_dir)
        assert tree  # the server (and its children, if any)
        ray.kill(server.proc)  # outright: the actor's own stop never runs
        assert survivors(tree, within=90) == []


@pytest.mark.timeout(600)
def test_ray_server_that_cannot_start_fails_naming_the_run_folder_log(
    tmp_path: Path, engine_env, ray_env: RayOptions
) -> None:
    from lmsynth.errors import PipelineError
    from lmsynth.llm import VllmModelConfig

    model = VllmModelConfig(model=str(tmp_path / "no-such-model"), enforce_eager=True)
    log = tmp_path / "out" / "logs" / "vllm-m.log"
    with ray_cluster(ray_env):
        server = RayEngineServer("m", model, log_path=log)
        server.start()
        try:
            with pytest.raises(PipelineError, match=rf"exited with code .*see {log}"):
                server.wait_healthy(timeout_s=300)
        finally:
            server.stop()
    lines = log.read_text().splitlines()  # the node's log, copied into the run folder
    assert SERVER_MODULE in lines[0] and any("no-such-model does not exist" in line for line in lines)


@pytest.mark.timeout(900)
@reads_proc
def test_sigterm_of_a_ray_run_stops_the_actor_server(
    tmp_path: Path, tiny_model_dir: Path, engine_env, ray_env: RayOptions
) -> None:
    """The run starts its own cluster, with every secret in its environment (tests/environ_watch.py): no process
    of that cluster (GCS, raylet, agents, step and queue actors, the server's actor) holds one."""
    import os
    import signal
    import subprocess
    import sys

    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.format(model=tiny_model_dir).replace("max_tokens: 8", "max_tokens: 48"))
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(400)])
    argv = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "out")]
    out = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [*argv, "--ray", "--ray-cpus", "2"], env=secrets_env(tmp_path), stdout=out, stderr=subprocess.STDOUT
    )
    deadline, units, tree = time.time() + 500, tmp_path / "cache" / "generate", {}
    with EnvironWatch(proc.pid) as watch:
        while time.time() < deadline and not (tree and units.is_dir() and any(units.rglob("*.json"))):
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            tree = server_tree(tiny_model_dir)
            time.sleep(0.5)
        assert tree, "the actor's server never served"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=240) != 0 and not (tmp_path / "out" / "run.json").exists()
    assert survivors(tree, within=40) == []
    assert "--host" in (tmp_path / "out" / "logs" / "vllm-tiny.log").read_text().splitlines()[0]
    assert len(watch.seen) >= 10, watch.commands()
    assert any(SERVER_MODULE in cmd for cmd in watch.commands()), watch.commands()
    assert watch.leaked() == {}
    assert leaks(watch.own) == []
