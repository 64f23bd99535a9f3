"""Projecting a full run from a sample run's report."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmsynth.cli.commands import app
from lmsynth.errors import InputRecordError
from lmsynth.pipeline.estimate import estimate
from lmsynth.pipeline.telemetry.report import RunReport, StepReport
from lmsynth.pipeline.telemetry.report_files import write_report


def sample(tmp_path: Path, **kw: object) -> Path:
    steps = [
        StepReport(step="generate", requests=50, input_tokens=2_000, output_tokens=40_000, failures=1, busy_s=80),
        StepReport(step="judge", requests=500, input_tokens=300_000, output_tokens=50_000, busy_s=90),
    ]
    fields = dict(instructions=50, records=50, wall_time_s=200.0, startup_s=20.0, gpus=1, gpu_hours=200 / 3600)
    fields.update(kw)
    write_report(tmp_path, RunReport(steps=steps, **fields))
    return tmp_path


class TestEstimate:
    def test_tokens_and_requests_scale_linearly_per_step(self, tmp_path: Path) -> None:
        est = estimate(sample(tmp_path), instructions=500_000)
        assert est.scale == 10_000
        gen, judge = est.steps
        assert (gen.requests, gen.input_tokens, gen.output_tokens, gen.failures) == (
            500_000,
            20_000_000,
            400_000_000,
            10_000,
        )
        assert judge.output_tokens == 500_000_000
        assert est.output_tokens == 900_000_000
        assert gen.busy_hours == pytest.approx(80 * 10_000 / 3600)

    def test_startup_does_not_scale(self, tmp_path: Path) -> None:
        est = estimate(sample(tmp_path), instructions=500)
        assert est.wall_hours == pytest.approx((20 + 180 * 10) / 3600)
        assert est.gpu_hours == pytest.approx(est.wall_hours)

    def test_replicas_share_the_work(self, tmp_path: Path) -> None:
        one = estimate(sample(tmp_path), instructions=500_000)
        eight = estimate(tmp_path, instructions=500_000, replicas=8)
        assert eight.wall_hours == pytest.approx((20 + 180 * 10_000 / 8) / 3600)
        assert eight.gpu_hours == pytest.approx(8 * eight.wall_hours)
        assert eight.gpu_hours == pytest.approx(one.gpu_hours + 7 * 20 / 3600)

    def test_gathered_sample_counts_its_shards(self, tmp_path: Path) -> None:
        # 3 shards side by side each did 1/3 of the 50 instructions in 200 s (20 s start-up).
        est = estimate(sample(tmp_path, runs=3, gpus=3), instructions=500)
        assert est.gpus_per_replica == 1
        assert est.wall_hours == pytest.approx((20 + 180 * 3 * 10) / 3600)

    def test_cpu_sample_projects_no_gpu_hours(self, tmp_path: Path) -> None:
        assert estimate(sample(tmp_path, gpus=0, gpu_hours=0), instructions=10_000).gpu_hours == 0

    def test_bad_arguments(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="`instructions` must be at least 1"):
            estimate(sample(tmp_path), instructions=0)
        with pytest.raises(ValueError, match="`replicas` must be at least 1"):
            estimate(tmp_path, instructions=1, replicas=0)

    def test_empty_sample_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(InputRecordError, match="field `instructions`: the sample covered no instructions"):
            estimate(sample(tmp_path, instructions=0), instructions=10)


def test_estimate_command_prints_a_table(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["estimate", str(sample(tmp_path)), "--instructions", "500000"])
    assert res.exit_code == 0, res.output
    assert "Projection per step" in res.output
    assert "400,000,000" in res.output  # generate's output tokens
    assert "gpu_hours: 500.01" in res.output  # 1 GPU × (20 s + 180 s × 10,000) / 3600
