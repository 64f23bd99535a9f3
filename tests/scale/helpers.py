"""Shard run folders built from `lmsynth.testing` run folders, for gather tests without a pipeline."""

from __future__ import annotations

import json
from pathlib import Path

from lmsynth.pipeline.shard import ShardSpec, in_shard
from lmsynth.pipeline.telemetry import RunReport, StepReport, write_report
from lmsynth.records import RUN_INFO_FILE, RUN_RECORDS_DIR, RUN_UNSAFE_DIR, iter_synth_records
from lmsynth.testing import write_run_dir


def split_run(run_dir: Path, out_root: Path, count: int, *, with_report: bool = True) -> list[Path]:
    """Write shards 1..count of `run_dir` under `out_root`, as `lmsynth run --shard I/N` would."""
    info = json.loads((run_dir / RUN_INFO_FILE).read_text())
    dirs = []
    for index in range(1, count + 1):
        spec = ShardSpec(index=index, count=count)
        d = out_root / spec.label
        for sub in (RUN_RECORDS_DIR, RUN_UNSAFE_DIR):
            recs = [r for r in iter_synth_records(run_dir / sub) if in_shard(r.conversation_id, spec)]
            (d / sub).mkdir(parents=True)
            (d / sub / "records-00000.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in recs))
        n = sum(1 for _ in iter_synth_records(d))
        if with_report:
            tokens = sum(
                a.response_token_length
                for r in iter_synth_records(d)
                for a in r.synthesized_response_scoring_annotations
            )
            step = StepReport(step="generate", batches=1, requests=n, generations=n, output_tokens=tokens, busy_s=1.0)
            write_report(d, RunReport(instructions=n, records=n, wall_time_s=2.0 + index, steps=[step]))
        shard_info = dict(info, shard=str(spec), counts={"records": n})
        (d / RUN_INFO_FILE).write_text(json.dumps(shard_info))
        dirs.append(d)
    return dirs


def make_run(path: Path, n: int = 60, *, unsafe_n: int = 5, seed: int = 0) -> Path:
    """A whole run folder of `n` synthetic records (one records file, like a small run writes)."""
    return write_run_dir(path, n, unsafe_n=unsafe_n, seed=seed)
