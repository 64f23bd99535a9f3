"""Run telemetry: counters per step, the report file, the events folder and the progress text."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from lmsynth.errors import InputRecordError
from lmsynth.pipeline.telemetry.collector import Telemetry
from lmsynth.pipeline.telemetry.events import BatchEvent, append_event
from lmsynth.pipeline.telemetry.report import RunReport, StepReport
from lmsynth.pipeline.telemetry.report_files import merge_reports, read_report, write_report
from lmsynth.records import iter_synth_records
from tests.scale.helpers import make_run


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed_from_records(tel: Telemetry, run: Path, *, batch: int = 7) -> None:
    """Feed the collector one batch per `batch` records, as the generate step sees them."""
    recs = list(iter_synth_records(run))
    for i in range(0, len(recs), batch):
        chunk = recs[i : i + batch]
        anns = [a for r in chunk for a in r.synthesized_response_scoring_annotations]
        tel.record_batch(
            "generate",
            requests=len(chunk),
            generations=len(anns),
            input_tokens=11 * len(chunk),
            output_tokens=sum(a.response_token_length for a in anns),
            seconds=0.5,
        )


class TestCollector:
    def test_token_totals_equal_the_sum_over_records(self, tmp_path: Path) -> None:
        run = make_run(tmp_path / "run", 40)
        tel = Telemetry()
        feed_from_records(tel, run)
        rep = tel.report(instructions=40, records=40)
        recs = list(iter_synth_records(run))
        step = rep.step("generate")
        assert step.output_tokens == sum(
            a.response_token_length for r in recs for a in r.synthesized_response_scoring_annotations
        )
        assert step.generations == sum(len(r.synthesized_assistant_responses) for r in recs)
        assert step.requests == 40 and step.batches == 6
        assert rep.output_tokens == step.output_tokens and rep.input_tokens == 440

    def test_steps_are_kept_apart_and_sorted(self) -> None:
        tel = Telemetry()
        tel.record_batch("translate", requests=2, output_tokens=5)
        tel.record_batch("judge", requests=3, output_tokens=7, failures=1, retries=2)
        tel.record_batch("judge", requests=1, output_tokens=1)
        rep = tel.report(instructions=2)
        assert [s.step for s in rep.steps] == ["judge", "translate"]
        assert rep.step("judge") == StepReport(
            step="judge", batches=2, requests=4, generations=4, output_tokens=8, failures=1, retries=2
        )
        assert rep.step("select") == StepReport(step="select")

    def test_wall_time_startup_and_gpu_hours(self) -> None:
        clock = FakeClock()
        tel = Telemetry(gpus=2, clock=clock)
        clock.now += 30  # engine start
        clock.now += 10
        tel.record_batch("generate", requests=4, seconds=10)
        clock.now += 3560
        rep = tel.report(instructions=4)
        assert rep.wall_time_s == 3600
        assert rep.startup_s == 30
        assert rep.gpu_hours == 2.0

    def test_cpu_run_has_no_gpu_hours(self) -> None:
        clock = FakeClock()
        tel = Telemetry(gpus=0, clock=clock)
        clock.now += 50
        assert tel.report(instructions=1).gpu_hours == 0

    def test_no_batch_means_all_startup(self) -> None:
        clock = FakeClock()
        tel = Telemetry(clock=clock)
        clock.now += 5
        rep = tel.report(instructions=0)
        assert rep.startup_s == rep.wall_time_s == 5

    def test_rate_text(self) -> None:
        clock = FakeClock()
        tel = Telemetry(clock=clock)
        clock.now += 2
        tel.record_batch("generate", requests=5, output_tokens=1000)
        assert tel.rate_text() == "2.5 req/s · 500 tok/s"

    def test_display_advances_by_requests(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import contextlib

        from lmsynth import progress

        calls: list[tuple[float, dict]] = []

        @contextlib.contextmanager
        def fake_task(description: str, *, total: float | None = None):
            calls.append((total, {"description": description}))
            yield lambda k=1, **fields: calls.append((k, fields))

        monkeypatch.setattr(progress, "task", fake_task)
        tel = Telemetry(total_requests=9)
        with tel.display("Generating"):
            tel.record_batch("generate", requests=4, output_tokens=10)
        tel.record_batch("generate", requests=1)  # after the display: counted, not shown
        assert calls[0] == (9, {"description": "Generating"})
        assert calls[1][0] == 4 and "req/s" in calls[1][1]["rate"] and "tok/s" in calls[1][1]["rate"]
        assert len(calls) == 2

    @pytest.mark.skipif(Path("/proc/driver/nvidia/gpus").is_dir(), reason="checks the CPU-only path")
    def test_cpu_machine_counts_no_gpu_without_importing_torch(self) -> None:
        import subprocess
        import sys

        code = (
            "import sys; from lmsynth.pipeline.telemetry.collector import visible_gpu_count;"
            "print(visible_gpu_count(), 'torch' in sys.modules)"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert res.stdout.split() == ["0", "False"]


def _emit(events_dir: str, k: int) -> None:
    for _ in range(50):
        append_event(events_dir, BatchEvent(step=f"step{k}", requests=1, output_tokens=3, seconds=0.01))


class TestEvents:
    def test_events_from_other_processes_are_counted(self, tmp_path: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_emit, args=(str(tmp_path / "ev"), k)) for k in range(3)]
        for p in procs:
            p.start()
        tel = Telemetry()
        with tel.follow(tmp_path / "ev", interval=0.05):
            for p in procs:
                p.join(60)
        rep = tel.report(instructions=150)
        assert [s.requests for s in rep.steps] == [50, 50, 50]
        assert rep.output_tokens == 450

    def test_ingest_reads_only_new_lines(self, tmp_path: Path) -> None:
        tel = Telemetry()
        append_event(tmp_path, BatchEvent(step="a", requests=1))
        assert tel.ingest(tmp_path) == 1
        assert tel.ingest(tmp_path) == 0
        append_event(tmp_path, BatchEvent(step="a", requests=2))
        assert tel.ingest(tmp_path) == 1
        assert tel.report(instructions=3).step("a").requests == 3

    def test_partial_line_waits(self, tmp_path: Path) -> None:
        tel = Telemetry()
        path = tmp_path / "events-1.jsonl"
        path.write_text('{"step": "a", "requests": 1}\n{"step": "a", "req')
        assert tel.ingest(tmp_path) == 1
        with open(path, "a") as f:
            f.write('uests": 4}\n')
        assert tel.ingest(tmp_path) == 1
        assert tel.report(instructions=1).step("a").requests == 5

    def test_bad_event_names_file_and_line(self, tmp_path: Path) -> None:
        (tmp_path / "events-9.jsonl").write_text('{"step": "a", "requests": 1}\n{"step": "a", "requests": -1}\n')
        with pytest.raises(InputRecordError, match=r"events-9.jsonl: line 2: field `requests`"):
            Telemetry().ingest(tmp_path)


class TestReportFile:
    def test_round_trip(self, tmp_path: Path) -> None:
        rep = RunReport(instructions=3, wall_time_s=1.5, steps=[StepReport(step="g", requests=3)])
        path = write_report(tmp_path, rep)
        assert json.loads(path.read_text())["steps"][0]["step"] == "g"
        assert read_report(tmp_path) == rep

    def test_missing_report_is_a_clear_error(self, tmp_path: Path) -> None:
        with pytest.raises(InputRecordError, match="run_report.json: no run report here"):
            read_report(tmp_path)

    def test_bad_field_is_named(self, tmp_path: Path) -> None:
        (tmp_path / "run_report.json").write_text('{"instructions": -1, "wall_time_s": 1}')
        with pytest.raises(InputRecordError, match=r"run_report.json: field `instructions`"):
            read_report(tmp_path)

    def test_merge_adds_counts_and_takes_longest_wall(self) -> None:
        a = RunReport(instructions=2, wall_time_s=10, gpus=1, gpu_hours=0.5, steps=[StepReport(step="g", requests=2)])
        b = RunReport(instructions=3, wall_time_s=12, gpus=1, gpu_hours=0.25, steps=[StepReport(step="g", requests=3)])
        m = merge_reports([a, b])
        assert (m.instructions, m.wall_time_s, m.gpus, m.gpu_hours, m.runs) == (5, 12, 2, 0.75, 2)
        assert m.step("g").requests == 5


class TestSpans:
    def test_span_runs_from_first_call_to_last_end_across_batches(self) -> None:
        tel = Telemetry()
        tel.record(BatchEvent(step="generate", requests=2, seconds=1.0, started_at=100.0, ended_at=101.0))
        tel.record(BatchEvent(step="generate", requests=2, seconds=1.5, started_at=101.5, ended_at=103.0))
        tel.record(BatchEvent(step="generate", rows=4, requests=0))  # a cached unit: no model call, no time
        step = tel.report(instructions=4).step("generate")
        assert step.span_s == 3.0 and step.busy_s == 2.5 and step.batches == 3

    def test_metered_model_counts_usage_and_excludes_start_up(self) -> None:
        from lmsynth.llm import FakeChatModel, FakeModelConfig
        from lmsynth.pipeline.telemetry.metering import MeteredChatModel
        from lmsynth.sampling import SamplingConfig

        class SlowStart:
            model_id, revision = "m", None

            def __init__(self) -> None:
                self.inner = FakeChatModel(FakeModelConfig(backend="fake", replies=["hello world"]))

            def start(self) -> None:
                import time

                time.sleep(0.3)

            def load(self) -> None: ...

            def close(self) -> None: ...

            def chat(self, conversations, **kw):  # noqa: ANN001, ANN003, ANN201
                return self.inner.chat(conversations, **kw)

        metered = MeteredChatModel(SlowStart())
        out = metered.chat([[{"role": "user", "content": "hi"}]] * 3, sampling=SamplingConfig(n=2, max_tokens=8))
        event = metered.event("generate", rows=3)
        assert event.requests == 3 and event.generations == 6 == sum(len(o) for o in out)
        assert event.output_tokens == sum(c.completion_tokens for o in out for c in o) > 0
        assert event.seconds < 0.3 and event.ended_at >= event.started_at
