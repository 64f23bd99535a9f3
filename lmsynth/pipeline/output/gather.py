"""Merge the run folders of a sharded run (`run_shard`, `lmsynth run --shard I/N`) into one run folder.

A shard run folder follows the run contract of `lmsynth.records` (`records/`, `unsafe/`, `run.json`) plus
`shard.json` (`ShardInfo`: which slice, and the fingerprint of the whole run), written before the shard
starts. `run.json` is written last, so a folder with `shard.json` and no `run.json` is a shard that did not
finish.

`gather` refuses, naming the shards at fault, unless the folders are exactly shards 1..N of one run with one
fingerprint, each finished, and each record sits in the shard its `conversation_id` hashes to. It then
writes the records in a deterministic order — the prepared input's order when the input folder is given or
recorded in `shard.json` — else by `conversation_id`, and a `run.json` whose counts and token totals are
the shards' sums, so that the gathered folder equals what one unsharded run writes. Records are indexed
first and copied byte for byte afterwards, so memory holds the index, not the records.

Duplicates across shards: each shard flags exact duplicates of the translated instruction only among its own
rows, so a duplicate whose first occurrence sits in another shard comes back answered. In input order,
gather points it at the first occurrence and drops its Japanese responses, as one unsharded run would have
skipped them (the tokens spent on them stay in the token totals: they were spent). `counts` follow.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from lmsynth.config import StrictModel
from lmsynth.errors import ShardSetError
from lmsynth.io import atomic_dir, dump_json_line, open_text, parse_line
from lmsynth.outdir import check_out, mark
from lmsynth.pipeline.output.parts import PartWriter
from lmsynth.pipeline.shard import SHARD_FILE, ShardInfo, in_shard, read_shard_info
from lmsynth.pipeline.telemetry.report import RUN_REPORT_FILE
from lmsynth.pipeline.telemetry.report_files import merge_reports, read_report, write_report
from lmsynth.progress import track
from lmsynth.records import (
    PREPARED_INSTRUCTIONS,
    PREPARED_UNSAFE,
    RUN_INFO_FILE,
    RUN_RECORDS_DIR,
    RUN_UNSAFE_DIR,
    InstructionRecord,
    RunCounts,
    RunInfo,
    SynthRecord,
    Usage,
    read_run_info,
    write_run_info,
)


logger = logging.getLogger(__name__)


class GatherResult(StrictModel):
    """What `gather` wrote."""

    out_dir: str
    shards: int
    records: int
    unsafe: int
    fingerprint: str
    order: str  # "input" or "conversation_id"


def gather(shard_dirs: list[Path | str], *, out_dir: Path | str, input_dir: Path | str | None = None) -> GatherResult:
    """Merge shard run folders into one run folder.

    Args:
        shard_dirs: The run folders of shards 1..N (any order).
        out_dir: The run folder to write; replaced atomically, never half-written.
        input_dir: The prepared input folder, whose order the records take; defaults to the `input` that
            the shards' `run.json` records, when it still exists. Without either, records are sorted by
            `conversation_id`.

    Returns:
        Counts, the common fingerprint and the order used.

    Raises:
        ShardSetError: a shard is missing, duplicated, unfinished, from another pipeline/config
            fingerprint, or holds a record that belongs to another shard (or twice).
        InputRecordError: a record line or a `run.json` does not validate (names the file, line and field).
    """
    if not shard_dirs:
        raise ShardSetError("missing", [], "`shard_dirs` can't be empty: give the run folders of every shard")
    dirs = [Path(d) for d in shard_dirs]
    out = Path(out_dir)
    # Neither a shard, nor one of their folders, nor the input: the one output-folder check of every verb.
    real_out = check_out(out, kind="run", inputs=[*dirs, input_dir])

    # 1. Every folder is a finished shard of the same run, and shards 1..N each appear once.
    infos = _check_shard_set(dirs)
    count = next(iter(infos.values())).shard.count
    ordered = sorted(dirs, key=lambda d: infos[d].shard.index)

    # 2. The order to write: the prepared input's, else conversation_id.
    source = Path(input_dir) if input_dir is not None else _recorded_input(infos.values())
    if input_dir is None and source is not None:
        check_out(out, kind="run", inputs=[source])
    positions = {sub: _input_positions(source, name) for sub, name in _SUBSETS.items()} if source else None

    # 3. Index every record (validated, in its right shard, seen once), then copy in order, resolving
    #    duplicates across shards when the order is the input's.
    if positions is None:
        logger.warning("No input order: duplicates across shards stay unresolved (pass the prepared folder)")
    with atomic_dir(real_out, private=True) as tmp:  # translated instructions: gated
        mark(tmp, "run")
        totals: dict[str, int] = {}
        changes: dict[str, int] = {}
        per_file = read_run_info(ordered[0]).shard_records  # the pipeline's, as every shard wrote its parts
        for sub in _SUBSETS:
            index = _index_records(ordered, infos, sub, positions[sub] if positions else None)
            with PartWriter(tmp / sub, per_file=per_file) as writer:
                totals[sub], delta = _copy_in_order(index, writer, reflag=positions is not None)
            if sub == RUN_RECORDS_DIR:
                changes = delta
        first = infos[ordered[0]]
        write_run_info(tmp, _gathered_info(ordered, [infos[d] for d in ordered], changes))
        reports = [d / RUN_REPORT_FILE for d in ordered]
        if all(r.is_file() for r in reports):
            write_report(tmp, merge_reports([read_report(d) for d in ordered]))
        elif any(r.is_file() for r in reports):
            logger.warning("Some shards have no %s; the gathered run gets none", RUN_REPORT_FILE)
    logger.info("Gathered %d shards into %s", count, out)
    return GatherResult(
        out_dir=str(out),
        shards=count,
        records=totals[RUN_RECORDS_DIR],
        unsafe=totals[RUN_UNSAFE_DIR],
        fingerprint=first.fingerprint,
        order="input" if positions else "conversation_id",
    )


# Private helpers

# Run sub-folder → the prepared file that gives its input order.
_SUBSETS = {RUN_RECORDS_DIR: PREPARED_INSTRUCTIONS, RUN_UNSAFE_DIR: PREPARED_UNSAFE}


def _check_shard_set(dirs: list[Path]) -> dict[Path, ShardInfo]:
    missing_dirs = [str(d) for d in dirs if not d.is_dir()]
    if missing_dirs:
        raise ShardSetError("missing", missing_dirs, f"not a folder: {', '.join(missing_dirs)}")
    given: dict[Path, Path] = {}
    for d in dirs:
        if d.resolve() in given:
            raise ShardSetError(
                "duplicated", [str(d)], f"shard folder {d} is given twice (as {given[d.resolve()]} and {d})"
            )
        given[d.resolve()] = d
    infos = {d: read_shard_info(d) for d in dirs}
    unsharded = [str(d) for d, i in infos.items() if i is None]
    if unsharded:
        raise ShardSetError("invalid", unsharded, f"not a shard run folder (no {SHARD_FILE}): {', '.join(unsharded)}")
    done: dict[Path, ShardInfo] = {d: i for d, i in infos.items() if i is not None}
    unfinished = [str(d) for d in done if not (d / RUN_INFO_FILE).is_file()]
    if unfinished:
        raise ShardSetError(
            "unfinished",
            unfinished,
            f"unfinished shard run (no {RUN_INFO_FILE}; rerun its `--shard` command to resume): "
            + ", ".join(unfinished),
        )
    fingerprints = {i.fingerprint for i in done.values()}
    if len(fingerprints) > 1:
        listing = "; ".join(f"{d} ({i.shard}) has {i.fingerprint[:12]}" for d, i in done.items())
        raise ShardSetError(
            "mismatch",
            [str(d) for d in done],
            f"shards come from different pipeline/config fingerprints: {listing}",
        )
    counts = {i.shard.count for i in done.values()}
    if len(counts) > 1:
        listing = ", ".join(f"{d} is {i.shard}" for d, i in done.items())
        raise ShardSetError("mismatch", [str(d) for d in done], f"shards of different splits: {listing}")

    count = counts.pop()
    by_index: dict[int, list[Path]] = {}
    for d, i in done.items():
        by_index.setdefault(i.shard.index, []).append(d)
    dups = {k: v for k, v in by_index.items() if len(v) > 1}
    if dups:
        listing = "; ".join(f"{k}/{count} in {', '.join(map(str, v))}" for k, v in sorted(dups.items()))
        raise ShardSetError("duplicated", [str(d) for v in dups.values() for d in v], f"duplicated shard: {listing}")
    absent = [f"{k}/{count}" for k in range(1, count + 1) if k not in by_index]
    if absent:
        raise ShardSetError("missing", absent, f"missing shard {', '.join(absent)} (got {len(dirs)} of {count})")
    return done


def _recorded_input(infos: Any) -> Path | None:
    recorded = {i.input_dir for i in infos if i.input_dir}
    if len(recorded) == 1:
        path = Path(recorded.pop())
        if (path / PREPARED_INSTRUCTIONS).is_file():
            return path
        logger.warning("The recorded input %s is gone; ordering records by conversation_id", path)
    return None


def _input_positions(source: Path, name: str) -> dict[str, int]:
    path = source / name
    if not path.is_file():
        return {}
    return {rec.conversation_id: i for i, rec in enumerate(_iter_models(path, InstructionRecord))}


def _iter_models(path: Path, model: type[BaseModel]) -> Iterator[Any]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield parse_line(line, model, path=path, lineno=lineno)


class _Entry(NamedTuple):
    key: tuple
    path: Path
    offset: int  # in the uncompressed stream
    length: int
    cid: str
    text: str | None  # sha256 of the stripped translated instruction; None when empty
    duplicate_of: str | None


def _index_records(
    dirs: list[Path], infos: dict[Path, ShardInfo], sub: str, positions: dict[str, int] | None
) -> list[_Entry]:
    entries: list[_Entry] = []
    seen: dict[str, Path] = {}
    files = [(d, f) for d in dirs for f in sorted((d / sub).glob("*.jsonl*")) if f.is_file()]
    for d, f in track(files, f"Checking {sub}", total=len(files), unit="files"):
        spec = infos[d].shard
        for lineno, offset, line in _lines_with_offsets(f):
            rec = parse_line(line, SynthRecord, path=f, lineno=lineno)
            cid = rec.conversation_id
            if cid in seen:
                raise ShardSetError(
                    "duplicated", [str(seen[cid]), str(d)], f"{f}: line {lineno}: record {cid} also in {seen[cid]}"
                )
            seen[cid] = d
            if not in_shard(cid, spec):
                raise ShardSetError(
                    "invalid", [str(d)], f"{f}: line {lineno}: record {cid} does not belong to shard {spec}"
                )
            if positions is None:
                key: tuple = (cid,)
            elif cid in positions:
                key = (0, positions[cid], cid)
            else:  # not in the given input: after the known ones, by id
                key = (1, 0, cid)
            ja = rec.translated_conversation[0].content.strip() if rec.translated_conversation else ""
            text = hashlib.sha256(ja.encode("utf-8")).hexdigest() if ja else None
            entries.append(
                _Entry(key, f, offset, len(line.encode("utf-8")), cid, text, rec.duplicate_user_instruction_ja)
            )
    entries.sort(key=lambda e: e.key)
    return entries


def _lines_with_offsets(path: Path) -> Iterator[tuple[int, int, str]]:
    with open(path, "rb") as raw:
        if path.suffix == ".gz":
            import gzip

            raw = gzip.open(raw, "rb")  # type: ignore[assignment]
        offset = 0
        for lineno, line in enumerate(raw, start=1):
            if line.strip():
                yield lineno, offset, line.decode("utf-8").rstrip("\n")
            offset += len(line)


def _copy_in_order(entries: list[_Entry], out: PartWriter, *, reflag: bool) -> tuple[int, dict[str, int]]:
    handles: dict[Path, Any] = {}
    first: dict[str, str] = {}
    delta = {"duplicate": 0, "responses_ja": 0, "judge_failures": 0, "multiturn": 0}
    try:
        for e in entries:
            if e.path not in handles:
                handles[e.path] = _open_for_seek(e.path)
            src = handles[e.path]
            src.seek(e.offset)
            line = src.read(e.length).rstrip(b"\n")
            original = first.setdefault(e.text, e.cid) if e.text is not None else None
            if reflag and original not in (None, e.cid) and e.duplicate_of != original:
                line = _as_duplicate(line, original, delta, newly=e.duplicate_of is None).encode("utf-8")
            out.write(line)
    finally:
        for h in handles.values():
            h.close()
    return len(entries), delta


def _as_duplicate(line: bytes, original: str, delta: dict[str, int], *, newly: bool) -> str:
    # What the pipeline writes for a duplicate: no Japanese responses (nor a 2-turn conversation built on
    # them); English responses, made from the English original, stay.
    rec = SynthRecord.model_validate_json(line, strict=True)
    delta["duplicate"] += newly
    delta["responses_ja"] -= len(rec.synthesized_assistant_responses)
    delta["judge_failures"] -= sum(a.preference_score is None for a in rec.synthesized_response_scoring_annotations)
    delta["multiturn"] -= bool(rec.synthesized_multiturn_conversation)
    rec = rec.model_copy(
        update={
            "duplicate_user_instruction_ja": original,
            "synthesized_assistant_responses": [],
            "synthesized_response_scoring_annotations": [],
            "synthesized_multiturn_conversation": [] if rec.synthesized_multiturn_conversation is not None else None,
        }
    )
    return dump_json_line(rec)


def _open_for_seek(path: Path) -> Any:
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rb")  # seekable (by decompressing up to the offset)
    return open(path, "rb")


def _gathered_info(dirs: list[Path], infos: list[ShardInfo], changes: dict[str, int]) -> RunInfo:
    # The first shard's run.json as the runner wrote it, with the whole run's identity and summed totals:
    # the same run.json one unsharded run writes.
    shard_runs = [read_run_info(d) for d in dirs]
    counts = {k: sum(getattr(r.counts, k) for r in shard_runs) for k in RunCounts.model_fields}
    for key, change in changes.items():
        if change:
            counts[key] = max(counts[key] + change, 0)
    tokens: dict[str, Usage] = {}
    for run in shard_runs:
        for stage, usage in run.tokens.items():
            tokens[stage] = tokens[stage] + usage if stage in tokens else usage
    return shard_runs[0].model_copy(
        update={
            "fingerprint": infos[0].fingerprint,
            "input_digest": infos[0].input_digest,
            "counts": RunCounts(**counts),
            "tokens": dict(sorted(tokens.items())),
        }
    )
