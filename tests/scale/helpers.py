"""Shard run folders built from `lmsynth.testing` run folders, for gather tests without a pipeline."""

from __future__ import annotations

from pathlib import Path

from lmsynth.pipeline.shard import ShardInfo, ShardSpec, in_shard, write_shard_info
from lmsynth.pipeline.telemetry.report import RunReport, StepReport
from lmsynth.pipeline.telemetry.report_files import write_report
from lmsynth.records import RUN_RECORDS_DIR, RUN_UNSAFE_DIR, iter_synth_records, read_run_info, write_run_info
from lmsynth.testing import synthetic_run_info, write_run_dir


def split_run(
    run_dir: Path, out_root: Path, count: int, *, with_report: bool = True, input_dir: Path | None = None
) -> list[Path]:
    """Write shards 1..count of `run_dir` under `out_root`, as `run_shard` would."""
    info = read_run_info(run_dir)
    dirs = []
    for index in range(1, count + 1):
        spec = ShardSpec(index=index, count=count)
        d = out_root / spec.label
        for sub in (RUN_RECORDS_DIR, RUN_UNSAFE_DIR):
            recs = [r for r in iter_synth_records(run_dir / sub) if in_shard(r.conversation_id, spec)]
            (d / sub).mkdir(parents=True)
            (d / sub / "part-00000.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in recs))
        n = sum(1 for _ in iter_synth_records(d))
        if with_report:
            tokens = sum(
                a.response_token_length
                for r in iter_synth_records(d)
                for a in r.synthesized_response_scoring_annotations
            )
            step = StepReport(step="generate", batches=1, requests=n, generations=n, output_tokens=tokens, busy_s=1.0)
            write_report(d, RunReport(instructions=n, records=n, wall_time_s=2.0 + index, steps=[step]))
        write_shard_info(
            d,
            ShardInfo(
                shard=spec,
                pipeline=info.pipeline,
                fingerprint=info.fingerprint,
                input_digest="whole-input",
                input_dir=str(input_dir) if input_dir else None,
            ),
        )
        unsafe = sum(1 for _ in iter_synth_records(d / RUN_UNSAFE_DIR))
        shape = info.pipeline.removeprefix("synthetic-")
        write_run_info(
            d, synthetic_run_info(iter_synth_records(d), unsafe=unsafe, shape=shape, fingerprint=f"slice-{index}")
        )
        dirs.append(d)
    return dirs


def make_run(path: Path, n: int = 60, *, unsafe_n: int = 5, seed: int = 0) -> Path:
    """A whole run folder of `n` synthetic records (one records file, like a small run writes)."""
    return write_run_dir(path, n, unsafe_n=unsafe_n, seed=seed)
