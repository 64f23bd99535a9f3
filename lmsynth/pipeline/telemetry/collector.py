"""The run's collector: per-batch counters, the events follower and the progress bar, turned into a report."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from lmsynth import progress
from lmsynth.errors import InputRecordError
from lmsynth.io import parse_line
from lmsynth.pipeline.telemetry.events import BatchEvent
from lmsynth.pipeline.telemetry.report import EngineReport, RunReport, StepReport


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
                    "units_invalid": old.units_invalid + event.units_invalid,
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
            units_invalid=sum(s.units_invalid for s in steps),
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
