"""Run telemetry: what a run cost, per step, written as `run_report.json` beside the records.

The report exists so that a user can price the full run from a small sample (`lmsynth estimate`): per step
it keeps the request, token, failure, retry and re-ask counts and the time spent in batches; for the run it keeps
the wall time, the time before the first batch finished (engine start, which does not grow with the input),
the number of instructions covered and the GPU-hours (visible GPUs × wall time; 0 on the CPU).

The runner feeds a `Telemetry` collector once per LLM batch. distilabel runs steps in other processes (or
Ray actors), so steps can instead append `BatchEvent` lines to an events folder (`append_event`) that the
collector in the main process follows; both paths end in the same counters.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from lmsynth import progress
from lmsynth.config import StrictModel
from lmsynth.errors import InputRecordError
from lmsynth.io import parse_line, write_json
from lmsynth.pipeline.stages import STAGE
from lmsynth.records import RunCounts, Usage, read_run_info


RUN_REPORT_FILE = "run_report.json"
REPORT_VERSION = 1
EVENTS_DIR = "telemetry"  # inside a run's work folder: one `events-<pid>.jsonl` per process


class StepReport(StrictModel):
    """The cost of one pipeline step, summed over its batches."""

    step: str
    batches: int = Field(0, ge=0)
    requests: int = Field(0, ge=0, description="Prompts sent to the LLM (one per instruction and step).")
    generations: int = Field(0, ge=0, description="Outputs received (requests × n for n-sample steps).")
    input_tokens: int = Field(0, ge=0, description="Prompt tokens, counted once per request.")
    output_tokens: int = Field(0, ge=0, description="Generated tokens over all outputs.")
    failures: int = Field(0, ge=0, description="Answers that could not be read, after every re-ask.")
    retries: int = Field(0, ge=0, description="Requests sent again after an error (server backend).")
    reasks: int = Field(0, ge=0, description="Prompts asked again because their answer could not be read.")
    busy_s: float = Field(0.0, ge=0, description="Seconds spent inside this step's model calls.")
    span_s: float = Field(
        0.0, ge=0, description="Seconds from the step's first model call to the end of its last (hand-offs included)."
    )


class EngineReport(StrictModel):
    """One engine server start (`lmsynth.pipeline.engines`): once per served model and run."""

    model: str = Field(description="The model's key in the pipeline YAML.")
    start_s: float | None = Field(None, ge=0, description="Seconds from launch to a healthy server; None: never.")


class RunReport(StrictModel):
    """`run_report.json`: the cost of one run (or of a gathered set of shard runs)."""

    version: int = REPORT_VERSION
    pipeline: str | None = None
    fingerprint: str | None = None
    shard: str | None = Field(None, description="`I/N` for a shard run; None for a whole or gathered run.")
    instructions: int = Field(ge=0, description="Input instructions this run covered: what `estimate` scales.")
    records: int = Field(0, ge=0, description="Records written.")
    wall_time_s: float = Field(ge=0)
    startup_s: float = Field(0.0, ge=0, description="Seconds until the first batch finished (engine start).")
    gpus: int = Field(0, ge=0, description="GPUs visible to the run (0 on the CPU).")
    gpu_hours: float = Field(0.0, ge=0)
    runs: int = Field(1, ge=1, description="How many runs this report sums (shards gathered).")
    steps: list[StepReport] = Field(default_factory=list)
    engines: list[EngineReport] = Field(default_factory=list, description="Engine servers started by the run.")
    engine_wait_s: float = Field(
        0.0, ge=0, description="Wall seconds with an engine starting or a model call in flight (waiting on it)."
    )
    lmsynth_s: float = Field(0.0, ge=0, description="The rest of the wall time: lmsynth and distilabel alone.")

    @property
    def input_tokens(self) -> int:
        """Prompt tokens over all steps."""
        return sum(s.input_tokens for s in self.steps)

    @property
    def output_tokens(self) -> int:
        """Generated tokens over all steps."""
        return sum(s.output_tokens for s in self.steps)

    def step(self, name: str) -> StepReport:
        """The report of step `name` (an empty one when the step made no requests)."""
        return next((s for s in self.steps if s.step == name), StepReport(step=name))


class BatchEvent(StrictModel):
    """One LLM batch, as a step process reports it (one line of an events file)."""

    step: str
    rows: int = Field(0, ge=0, description="Rows this batch finished for its step, served from the cache or not.")
    requests: int = Field(ge=0)
    generations: int = Field(0, ge=0)
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    failures: int = Field(0, ge=0)
    retries: int = Field(0, ge=0)
    seconds: float = Field(0.0, ge=0, description="Time inside model calls (engine start excluded).")
    started_at: float | None = Field(None, description="Epoch seconds when the first model call began.")
    ended_at: float | None = Field(None, description="Epoch seconds when the last model call ended.")
    cached: bool = Field(False, description="The batch was one cache unit served from the stage cache.")


class MeteredChatModel:
    """A `ChatModel` wrapper that counts what one batch asked of the model, for a `BatchEvent`."""

    def __init__(self, model: Any) -> None:
        """Wrap `model` (anything with the `ChatModel` protocol)."""
        self.model = model
        self.model_id = model.model_id
        self.revision = model.revision
        self.requests = self.generations = self.input_tokens = self.output_tokens = 0
        self.seconds = 0.0
        self.started_at: float | None = None
        self.ended_at: float | None = None

    def load(self) -> None:
        """Start the wrapped model."""
        self.model.load()

    def close(self) -> None:
        """Release the wrapped model."""
        self.model.close()

    def chat(self, conversations: Any, **kwargs: Any) -> list[list[Any]]:
        """Call the wrapped model and add its usage and time to the counters (its start-up is not timed)."""
        getattr(self.model, "start", self.model.load)()
        began, t0 = time.time(), time.perf_counter()
        out = self.model.chat(conversations, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.started_at = self.started_at if self.started_at is not None else began
        self.ended_at = time.time()
        self.requests += len(conversations)
        for completions in out:
            self.generations += len(completions)
            self.input_tokens += completions[0].prompt_tokens if completions else 0
            self.output_tokens += sum(c.completion_tokens for c in completions)
        return out

    def event(self, step: str, *, rows: int, cached: bool = False) -> BatchEvent:
        """The counters as one event of `step`."""
        return BatchEvent(
            step=step,
            rows=rows,
            requests=self.requests,
            generations=self.generations,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            seconds=round(self.seconds, 6),
            started_at=self.started_at,
            ended_at=self.ended_at,
            cached=cached,
        )


def visible_gpu_count() -> int:
    """GPUs this process can use: 0 without an NVIDIA driver, else what CUDA reports.

    The driver check comes first so that a CPU-only run never imports torch just to learn it has no GPU.
    """
    if not Path("/proc/driver/nvidia/gpus").is_dir():
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def append_event(events_dir: Path | str, event: BatchEvent) -> None:
    """Append `event` to this process's events file (one `write` of one line, so lines never interleave)."""
    events_dir = Path(events_dir)
    events_dir.mkdir(parents=True, exist_ok=True)
    line = (event.model_dump_json() + "\n").encode("utf-8")
    fd = os.open(events_dir / f"events-{os.getpid()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Telemetry:
    """Collects per-batch counters during a run and turns them into a `RunReport`.

    Thread-safe: the runner, a server backend's worker threads and the events follower may all record.
    """

    def __init__(self, *, total_requests: int | None = None, gpus: int = 0, clock=time.monotonic) -> None:
        """Start the clock.

        Args:
            total_requests: Requests the run expects in all (drives the progress bar's ETA); None if unknown.
            gpus: GPUs the run uses; GPU-hours are `gpus × wall time`.
            clock: Seconds source, replaceable in tests.
        """
        self.total_requests = total_requests
        self.gpus = gpus
        self._clock = clock
        self._t0 = clock()
        self._first_batch_at: float | None = None
        self._steps: dict[str, StepReport] = {}
        self._lock = threading.Lock()
        self._advance = None
        self._offsets: dict[Path, tuple[int, int]] = {}  # events file → (bytes read, lines read)
        self._spans: dict[str, tuple[float, float]] = {}  # step → (first model call began, last one ended)
        self._t0_epoch = time.time()
        self._busy: list[tuple[float, float]] = []  # epoch intervals: engine starts and batches' model calls
        self._engines: list[EngineReport] = []
        self._units: dict[str, list[int]] = {}  # step → [units computed, units served from the cache]

    def record_batch(
        self,
        step: str,
        *,
        requests: int,
        generations: int | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        failures: int = 0,
        retries: int = 0,
        seconds: float = 0.0,
    ) -> None:
        """Add one batch of `step` to the counters and advance the progress bar by its requests."""
        self.record(
            BatchEvent(
                step=step,
                requests=requests,
                generations=requests if generations is None else generations,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                failures=failures,
                retries=retries,
                seconds=seconds,
            )
        )

    def record(self, event: BatchEvent) -> None:
        """Add one `BatchEvent` (from this process or read from an events file)."""
        with self._lock:
            if self._first_batch_at is None:
                # When the first batch began: everything before it (engine start) does not grow with the input.
                self._first_batch_at = max(self._clock() - event.seconds, self._t0)
            units = self._units.setdefault(event.step, [0, 0])
            units[int(event.cached)] += 1
            span = self._spans.get(event.step)
            if event.started_at is not None and event.ended_at is not None:
                self._busy.append((event.started_at, event.ended_at))
                lo, hi = span or (event.started_at, event.ended_at)
                span = self._spans[event.step] = (min(lo, event.started_at), max(hi, event.ended_at))
            old = self._steps.get(event.step, StepReport(step=event.step))
            self._steps[event.step] = old.model_copy(
                update={
                    "batches": old.batches + 1,
                    "requests": old.requests + event.requests,
                    "generations": old.generations + event.generations,
                    "input_tokens": old.input_tokens + event.input_tokens,
                    "output_tokens": old.output_tokens + event.output_tokens,
                    "failures": old.failures + event.failures,
                    "retries": old.retries + event.retries,
                    "busy_s": old.busy_s + event.seconds,
                    "span_s": round(span[1] - span[0], 6) if span else old.span_s,
                }
            )
            advance = self._advance
        if advance is not None:
            # The bar counts rows through steps (cached rows too), so its ETA holds on a resumed run.
            advance(event.rows or event.requests, rate=self.rate_text())

    def record_engine_start(
        self, *, model: str, began_at: float | None, ready_at: float | None, seconds: float | None = None
    ) -> None:
        """Add one engine server start (epoch seconds; `ready_at` None: it never became healthy)."""
        with self._lock:
            self._engines.append(EngineReport(model=model, start_s=round(seconds, 3) if seconds is not None else None))
            if began_at is not None:
                self._busy.append((began_at, ready_at if ready_at is not None else time.time()))

    def ingest(self, events_dir: Path | str) -> int:
        """Record the events appended to `events_dir` since the last call; return how many were new.

        Raises:
            InputRecordError: an events line does not validate (names the file and line).
        """
        events_dir = Path(events_dir)
        n = 0
        for path in sorted(events_dir.glob("events-*.jsonl")) if events_dir.is_dir() else []:
            start, lines = self._offsets.get(path, (0, 0))
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next call
            chunk = complete.decode("utf-8").splitlines()
            self._offsets[path] = (start + len(complete), lines + len(chunk))
            for i, raw in enumerate(chunk, start=lines + 1):
                if raw.strip():
                    self.record(parse_line(raw, BatchEvent, path=path, lineno=i))
                    n += 1
        return n

    @contextlib.contextmanager
    def follow(self, events_dir: Path | str, *, interval: float = 0.5) -> Iterator[None]:
        """Ingest `events_dir` in a background thread while the block runs, and once more at its end."""
        stop = threading.Event()
        errors: list[InputRecordError] = []

        def _loop() -> None:
            while not stop.wait(interval):
                try:
                    self.ingest(events_dir)
                except InputRecordError as e:  # surfaced after the block; the run itself goes on
                    errors.append(e)
                    return

        thread = threading.Thread(target=_loop, name="lmsynth-telemetry", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if not errors:
                self.ingest(events_dir)
        if errors:
            raise errors[0]

    @contextlib.contextmanager
    def display(self, description: str = "Generating") -> Iterator[None]:
        """Show a progress bar (requests done of `total_requests`, req/s, generated tok/s, ETA) under the CLI."""
        with progress.task(description, total=self.total_requests) as advance:
            self._advance = advance
            try:
                yield
            finally:
                self._advance = None

    def units(self) -> dict[str, tuple[int, int]]:
        """Per step, the cache units this run computed and those it reused (one per batch event)."""
        with self._lock:
            return {step: (made, reused) for step, (made, reused) in self._units.items()}

    def rate_text(self) -> str:
        """`"3.2 req/s · 410 tok/s"` over the run so far."""
        elapsed = max(self._clock() - self._t0, 1e-9)
        with self._lock:
            requests = sum(s.requests for s in self._steps.values())
            tokens = sum(s.output_tokens for s in self._steps.values())
        return f"{requests / elapsed:,.1f} req/s · {tokens / elapsed:,.0f} tok/s"

    def report(
        self,
        *,
        instructions: int,
        records: int = 0,
        pipeline: str | None = None,
        fingerprint: str | None = None,
        shard: str | None = None,
    ) -> RunReport:
        """The report of the run so far (call at its end)."""
        wall = max(self._clock() - self._t0, 0.0)
        with self._lock:
            steps = [self._steps[k] for k in sorted(self._steps)]
            startup = (self._first_batch_at - self._t0) if self._first_batch_at is not None else wall
            engines = list(self._engines)
            waiting = min(_union_s(self._busy, lo=self._t0_epoch, hi=self._t0_epoch + wall), wall)
        return RunReport(
            pipeline=pipeline,
            fingerprint=fingerprint,
            shard=shard,
            instructions=instructions,
            records=records,
            wall_time_s=round(wall, 3),
            startup_s=round(min(startup, wall), 3),
            gpus=self.gpus,
            gpu_hours=round(self.gpus * wall / 3600, 6),
            steps=steps,
            engines=engines,
            engine_wait_s=round(waiting, 3),
            lmsynth_s=round(wall - waiting, 3),
        )


def _union_s(intervals: list[tuple[float, float]], *, lo: float, hi: float) -> float:
    """Seconds covered by at least one interval, within [lo, hi]."""
    total, end = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, end), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


def write_report(run_dir: Path | str, report: RunReport) -> Path:
    """Write `run_report.json` into `run_dir` atomically and return its path."""
    path = Path(run_dir) / RUN_REPORT_FILE
    write_json(path, report.model_dump(mode="json"))
    return path


def read_report(run_dir: Path | str) -> RunReport:
    """Read a run folder's `run_report.json`.

    Raises:
        InputRecordError: the file is missing or does not validate (names the file and field).
    """
    path = Path(run_dir) / RUN_REPORT_FILE
    if not path.is_file():
        raise InputRecordError(path, None, None, "no run report here; is this a finished `lmsynth run` folder?")
    return parse_line(path.read_text(encoding="utf-8"), RunReport, path=path, lineno=None)


def report_from_run(run_dir: Path | str, *, telemetry: Telemetry, shard: str | None = None) -> RunReport:
    """The report of a finished run folder: token and request totals from its `run.json`, times from `telemetry`.

    `run.json` sums each stage's usage over every row of the output, so the totals agree with the records
    (a row served from the cache counts what it cost when it was made). Batch times come from the events
    the steps appended, when they did.

    Raises:
        InputRecordError: `run.json` is missing or does not validate (names the file and the field).
    """
    info = read_run_info(run_dir)
    counts = info.counts
    live = telemetry.report(instructions=0)
    steps = [
        StepReport(
            step=stage,
            batches=live.step(stage).batches,
            requests=usage.requests,
            generations=_generations(stage, usage, counts),
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            failures=_failures(stage, usage, counts),
            retries=live.step(stage).retries,
            reasks=usage.reasks,
            busy_s=live.step(stage).busy_s,
            span_s=live.step(stage).span_s,
        )
        for stage, usage in sorted(info.tokens.items())
    ]
    return live.model_copy(
        update={
            "pipeline": info.pipeline,
            "fingerprint": info.fingerprint,
            "shard": shard,
            "instructions": counts.instructions,
            "records": counts.instructions,
            "steps": steps,
        }
    )


def _generations(stage: str, usage: Usage, counts: RunCounts) -> int:
    """Outputs a stage received: its counted outputs where it asks for n per request, else its requests."""
    fields = STAGE[stage].generation_counts if stage in STAGE else ()
    return sum(getattr(counts, f) for f in fields) if fields else usage.requests


def _failures(stage: str, usage: Usage, counts: RunCounts) -> int:
    """A stage's failures; a run.json written before `Usage.failures` has them only in its counts."""
    if "failures" in usage.model_fields_set:
        return usage.failures
    legacy = STAGE[stage].legacy_failures if stage in STAGE else None
    return getattr(counts, legacy) if legacy else 0


def merge_reports(reports: list[RunReport]) -> RunReport:
    """One report for shard runs done side by side: counts and GPU-hours add up, wall time is the longest.

    Raises:
        ValueError: `reports` is empty.
    """
    if not reports:
        raise ValueError("`reports` can't be empty")
    steps: dict[str, dict[str, float]] = {}
    for rep in reports:
        for s in rep.steps:
            acc = steps.setdefault(s.step, dict.fromkeys(StepReport.model_fields.keys() - {"step"}, 0))
            for key in acc:
                acc[key] += getattr(s, key)
    first = reports[0]
    return RunReport(
        pipeline=first.pipeline,
        fingerprint=first.fingerprint,
        shard=None,
        instructions=sum(r.instructions for r in reports),
        records=sum(r.records for r in reports),
        wall_time_s=max(r.wall_time_s for r in reports),
        startup_s=max(r.startup_s for r in reports),
        gpus=sum(r.gpus for r in reports),
        gpu_hours=round(sum(r.gpu_hours for r in reports), 6),
        runs=sum(r.runs for r in reports),
        steps=[StepReport(step=k, **v) for k, v in sorted(steps.items())],
        engines=[e for r in reports for e in r.engines],
        engine_wait_s=round(sum(r.engine_wait_s for r in reports), 3),
        lmsynth_s=round(sum(r.lmsynth_s for r in reports), 3),
    )
