"""Report files: write and read `run_report.json`, derive it from a finished run folder, merge shard reports."""

from __future__ import annotations

from pathlib import Path

from lmsynth.errors import InputRecordError
from lmsynth.io import parse_line, write_json
from lmsynth.pipeline.stages.registry import STAGE
from lmsynth.pipeline.telemetry.collector import Telemetry
from lmsynth.pipeline.telemetry.report import RUN_REPORT_FILE, RunReport, StepReport
from lmsynth.records import RunCounts, Usage, read_run_info


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
            units_invalid=live.step(stage).units_invalid,
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
        units_invalid=sum(r.units_invalid for r in reports),
    )
