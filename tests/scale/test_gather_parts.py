"""One writer for a run folder's parts: a sharded run gathered gives the unsharded run's files, for any
`shard_records` (names, and the records of each file in order)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.pipeline.output.gather import gather
from lmsynth.pipeline.run import run_pipeline
from lmsynth.pipeline.shard import ShardSpec, run_shard
from lmsynth.prepare import prepare
from lmsynth.records import RUN_RECORDS_DIR, RUN_UNSAFE_DIR, read_run_info
from lmsynth.testing import write_scripted_pipeline
from tests.pipeline.factories import write_fake_pipeline
from tests.scale.test_shard_runs import prepared_with_cross_shard_duplicate


def parts(run_dir: Path) -> dict[str, list[str]]:
    """`records/` and `unsafe/`: file name → the conversation ids of its records, in order."""
    return {
        f"{sub}/{f.name}": [json.loads(line)["conversation_id"] for line in f.read_text().splitlines()]
        for sub in (RUN_RECORDS_DIR, RUN_UNSAFE_DIR)
        for f in sorted((run_dir / sub).iterdir())
    }


def whole_and_gathered(pipe: Path, prep: Path, root: Path, cache: Path) -> tuple[Path, Path]:
    run_pipeline(pipe, input_dir=prep, out_dir=root / "whole", cache_dir=cache)
    shards = []
    for k in (1, 2, 3):
        shards.append(root / f"shard-{k}")
        run_shard(pipe, input_dir=prep, out_dir=shards[-1], shard=ShardSpec(index=k, count=3), cache_dir=cache)
    gather(shards, out_dir=root / "gathered")
    return root / "whole", root / "gathered"


@pytest.mark.timeout(600)
def test_gathered_parts_equal_the_unsharded_runs_for_any_shard_records(tmp_path: Path) -> None:
    prep = prepared_with_cross_shard_duplicate(tmp_path)  # 12 records, 4 unsafe
    for per_file in (1, 5, 12, 10_000):
        root = tmp_path / str(per_file)
        root.mkdir()
        pipe, _ = write_fake_pipeline(root, batch_size=4)
        pipe.write_text(pipe.read_text() + f"shard_records: {per_file}\n")
        whole, gathered = whole_and_gathered(pipe, prep, root, tmp_path / "cache")
        assert read_run_info(whole).shard_records == read_run_info(gathered).shard_records == per_file
        want = parts(whole)
        assert parts(gathered) == want
        assert len([n for n in want if n.startswith(RUN_RECORDS_DIR)]) == -(-12 // per_file)


@pytest.mark.timeout(900)
def test_v05_on_the_bundled_sample_with_shard_records_40(tmp_path: Path) -> None:
    """The case that had two writers: six files of 40 (and one of 10) unsharded, one file of 210 gathered."""
    prep = tmp_path / "prepared"
    prepare(None, out_dir=prep)
    pipe = write_scripted_pipeline(constants.PIPELINES_DIR / "v0.5-gemma3.yaml", tmp_path, shard_records=40)
    whole, gathered = whole_and_gathered(pipe, prep, tmp_path, tmp_path / "cache")
    want = parts(whole)
    assert [len(ids) for name, ids in want.items() if name.startswith(RUN_RECORDS_DIR)] == [40] * 5 + [10]
    assert parts(gathered) == want
