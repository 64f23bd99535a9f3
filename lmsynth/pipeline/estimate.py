"""Project the cost of a full run from a sample run's `run_report.json`.

The model is deliberately simple and stated: tokens, requests, failures and the time spent in batches grow
linearly with the number of instructions, step by step; start-up (engine load, the time before the first
batch) does not grow. With `replicas` (shards or data-parallel copies of the sample's setup, each with the
sample's GPUs) the batch time is divided among them and start-up is paid by each. GPU-hours are
`GPUs × replicas × projected wall time`. A 1% sample of a 500k-instruction run is enough for the totals;
the wall time is only as good as the sample's batch sizes are representative (see STACK throughput notes).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.errors import InputRecordError
from lmsynth.pipeline.telemetry.report import RUN_REPORT_FILE
from lmsynth.pipeline.telemetry.report_files import read_report


class StepProjection(StrictModel):
    """One step's sample figures and their projection."""

    step: str
    sample_requests: int
    requests: int
    input_tokens: int
    output_tokens: int
    failures: int
    busy_hours: float = Field(description="Projected hours spent in this step's batches, one replica.")


class Estimate(StrictModel):
    """The projection of a full run from a sample run."""

    run_dir: str
    sample_instructions: int
    instructions: int
    scale: float = Field(description="`instructions / sample_instructions`.")
    replicas: int
    gpus_per_replica: int
    steps: list[StepProjection]
    input_tokens: int
    output_tokens: int
    wall_hours: float
    gpu_hours: float
    output_tokens_per_s: float = Field(description="Generated tokens per second of the sample run's wall time.")


def estimate(run_dir: Path | str, *, instructions: int, replicas: int = 1) -> Estimate:
    """Project tokens, wall time and GPU-hours of a run over `instructions` from a sample run.

    Args:
        run_dir: A finished run folder (with `run_report.json`), e.g. a 1% sample.
        instructions: Instructions of the full run (e.g. 500000).
        replicas: Copies of the sample's setup working side by side (shards, each on its own GPUs).

    Returns:
        Per-step and total projections.

    Raises:
        ValueError: `instructions` or `replicas` is not positive.
        InputRecordError: the report is missing or invalid, or covers no instructions.
    """
    if instructions < 1:
        raise ValueError(f"`instructions` must be at least 1, got {instructions}")
    if replicas < 1:
        raise ValueError(f"`replicas` must be at least 1, got {replicas}")
    report = read_report(run_dir)
    if report.instructions == 0:
        raise InputRecordError(
            Path(run_dir) / RUN_REPORT_FILE, None, "instructions", "the sample covered no instructions"
        )
    scale = instructions / report.instructions
    steps = [
        StepProjection(
            step=s.step,
            sample_requests=s.requests,
            requests=round(s.requests * scale),
            input_tokens=round(s.input_tokens * scale),
            output_tokens=round(s.output_tokens * scale),
            failures=round(s.failures * scale),
            busy_hours=s.busy_s * scale / 3600,
        )
        for s in report.steps
    ]
    # Wall time: start-up is paid once per replica, side by side; the rest grows with the input and is shared.
    # A gathered sample (`runs` shards side by side) did its batch time on `runs` replicas at once.
    scalable = max(report.wall_time_s - report.startup_s, 0.0) * report.runs
    wall_s = report.startup_s + scalable * scale / replicas
    gpus = report.gpus // report.runs
    return Estimate(
        run_dir=str(run_dir),
        sample_instructions=report.instructions,
        instructions=instructions,
        scale=scale,
        replicas=replicas,
        gpus_per_replica=gpus,
        steps=steps,
        input_tokens=sum(s.input_tokens for s in steps),
        output_tokens=sum(s.output_tokens for s in steps),
        wall_hours=wall_s / 3600,
        gpu_hours=gpus * replicas * wall_s / 3600,
        output_tokens_per_s=report.output_tokens / report.wall_time_s if report.wall_time_s else 0.0,
    )
