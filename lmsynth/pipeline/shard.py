"""Deterministic slices of a run, for Slurm/PBS array jobs or several independent vLLM servers.

A shard is `I/N` (1-based `I` of `N`). A conversation belongs to shard `I` when the first 8 bytes of
`sha256(conversation_id)` read as a big-endian integer are `I - 1` modulo `N`. The hash is sha256, not
Python's `hash()`, because `hash()` of a string changes from one process to the next (PYTHONHASHSEED):
array jobs on different nodes must agree on the split without talking to each other. Every id falls in
exactly one of the `N` shards, whatever the input order, so the `N` shard outputs together hold every
record once and `lmsynth gather` can check that they do.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import Field, model_validator

from lmsynth import constants
from lmsynth.config import StrictModel
from lmsynth.errors import ShardSpecError
from lmsynth.io import parse_line, write_json
from lmsynth.outdir import check_out, mark


if TYPE_CHECKING:
    from lmsynth.pipeline.executor.on_ray import RayOptions
    from lmsynth.pipeline.run import RunResult


T = TypeVar("T")

logger = logging.getLogger(__name__)

SHARD_OPTION = "--shard"
SHARD_FILE = "shard.json"  # in a shard's run folder, written before the run starts


class ShardSpec(StrictModel):
    """Shard `index` of `count` (1-based), written `I/N` on the command line and in run.json."""

    index: int = Field(ge=1, description="1-based position of this shard.")
    count: int = Field(ge=1, description="How many shards the run is split into.")

    @model_validator(mode="after")
    def _index_within_count(self) -> ShardSpec:
        if self.index > self.count:
            raise ValueError(f"shard index {self.index} is larger than the shard count {self.count}")
        return self

    @classmethod
    def parse(cls, value: str, *, option: str = SHARD_OPTION) -> ShardSpec:
        """Parse `"I/N"`.

        Args:
            value: The text given by the user, e.g. `"2/3"`.
            option: The option or field the value came from, named in the error.

        Returns:
            The validated spec.

        Raises:
            ShardSpecError: `value` is not two integers `I/N` with `1 <= I <= N`.
        """
        parts = value.strip().split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ShardSpecError(option, value, "expected I/N with 1 <= I <= N, e.g. 2/3")
        index, count = (int(p) for p in parts)
        if count < 1:
            raise ShardSpecError(option, value, "the shard count N must be at least 1")
        if not 1 <= index <= count:
            raise ShardSpecError(option, value, f"the shard index I must be between 1 and {count}")
        return cls(index=index, count=count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        """File-name-safe form, e.g. `shard-2-of-3`."""
        return f"shard-{self.index}-of-{self.count}"


def shard_of(conversation_id: str, count: int) -> int:
    """The 1-based shard that `conversation_id` belongs to when a run is split `count` ways."""
    digest = hashlib.sha256(conversation_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def in_shard(conversation_id: str, spec: ShardSpec | None) -> bool:
    """Whether `conversation_id` belongs to `spec` (always true without a spec: the whole run)."""
    if spec is None or spec.count == 1:
        return True
    return shard_of(conversation_id, spec.count) == spec.index


def select_shard(items: Iterable[T], spec: ShardSpec | None, *, key: Callable[[T], str]) -> Iterator[T]:
    """Yield the items of `spec`, keeping their order; `key` gives an item's conversation_id."""
    for item in items:
        if in_shard(key(item), spec):
            yield item


class ShardInfo(StrictModel):
    """`shard.json`: which slice a run folder holds, and the identity of the whole run it is a slice of.

    It is written before the shard runs (so a killed shard is still recognisable) and `run.json` is written
    last, so gather can tell an unfinished shard from a missing one.
    """

    shard: ShardSpec
    pipeline: str
    fingerprint: str = Field(description="The whole run's fingerprint: config and every input row (not the slice).")
    input_digest: str = Field(description="Digest of the whole input, as an unsharded run records it.")
    input_dir: str | None = Field(None, description="The prepared folder read; gather takes its record order.")


def write_shard_info(run_dir: Path | str, info: ShardInfo) -> Path:
    """Write `shard.json` into `run_dir` atomically."""
    path = Path(run_dir) / SHARD_FILE
    write_json(path, info.model_dump(mode="json"))
    return path


def read_shard_info(run_dir: Path | str) -> ShardInfo | None:
    """A run folder's `shard.json`, or None for a folder that is not a shard.

    Raises:
        InputRecordError: `shard.json` does not validate (names the file and field).
    """
    path = Path(run_dir) / SHARD_FILE
    if not path.is_file():
        return None
    return parse_line(path.read_text(encoding="utf-8"), ShardInfo, path=path, lineno=None)


def run_shard(
    pipeline_path: Path | str,
    *,
    input_dir: Path | str,
    out_dir: Path | str,
    shard: ShardSpec,
    cache_dir: Path | None = None,
    ray: RayOptions | None = None,
) -> RunResult:
    """Run one slice of a pipeline run, for array jobs; rerunning the same call resumes that slice alone.

    Args:
        pipeline_path: The pipeline YAML.
        input_dir: The whole prepared input (every shard reads all of it and keeps its slice).
        out_dir: This shard's run folder (`shard.json`, `records/`, `unsafe/`, `run_report.json`, `run.json`).
        shard: Which slice.
        cache_dir: The cache root (default `constants.CACHE_DIR`); shards may share it.
        ray: Run the slice's steps on this Ray cluster.

    Returns:
        The run result of the slice.

    Raises:
        ConfigError, InputRecordError, PipelineError: as `run_pipeline`.
    """
    from lmsynth.pipeline.config import load_pipeline_config, run_fingerprint
    from lmsynth.pipeline.run import run_pipeline, scan_input
    from lmsynth.pipeline.telemetry.collector import Telemetry
    from lmsynth.pipeline.telemetry.report_files import report_from_run, write_report

    real_out = check_out(out_dir, kind="run", inputs=[pipeline_path, input_dir, cache_dir or constants.CACHE_DIR])
    config = load_pipeline_config(pipeline_path)
    whole = scan_input(Path(input_dir), limit=config.limit).digest
    info = ShardInfo(
        shard=shard,
        pipeline=config.name,
        fingerprint=run_fingerprint(config, input_digest=whole),
        input_digest=whole,
        input_dir=str(Path(input_dir).resolve()),
    )
    mark(real_out, "run")
    write_shard_info(real_out, info)
    telemetry = Telemetry()
    started = time.monotonic()
    result = run_pipeline(
        pipeline_path,
        input_dir=input_dir,
        out_dir=out_dir,
        config=config,
        cache_dir=cache_dir,
        row_filter=lambda rec: in_shard(rec.conversation_id, shard),
        ray=ray,
    )
    logger.info("Shard %s finished in %.1f s", shard, time.monotonic() - started)
    write_report(out_dir, report_from_run(out_dir, telemetry=telemetry, shard=str(shard)))
    return result
