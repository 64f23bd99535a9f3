"""Stream a subset's SynthRecords into public Parquet shards and sorted gated JSONL, in bounded memory.

Each input line is validated with `SynthRecord` (a bad line stops the build with the file, line and field)
and converted to Arrow by pyarrow's JSON reader in batches, with a fixed schema that leaves out the gated
`translated_conversation`. A batch is one row group; a shard is closed when it passes `shard_bytes` and
shards are renamed to `train-0000i-of-0000N.parquet` once N is known. The same input gives the same bytes:
the schema is fixed, rows keep input order, and nothing time-dependent is written.

The gated instructions are sorted by `conversation_id` with an external merge sort (sorted runs spilled
to the work folder, a scratch folder, only past `SPILL_LINES`), so memory stays flat with the record count.
They are handed back as re-readable sorted line streams, never as a plaintext file: the release streams
them into gpg.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from lmsynth.errors import InputRecordError
from lmsynth.io import parse_line
from lmsynth.progress import track
from lmsynth.records import PUBLIC_FIELDS, RUN_RECORDS_DIR, RUN_UNSAFE_DIR, GatedInstruction, SynthRecord
from lmsynth.release.inputs import RunInput, as_input
from lmsynth.release.release_yaml import SubsetSpec
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import SubsetCounts


ROWS_PER_GROUP = 1_000
GROUP_BYTES = 64 * 2**20  # a row group also ends at this much input JSON (bounds memory for long records)
SHARD_BYTES = 512 * 2**20
SPILL_LINES = 50_000
# Histogram bins of the figures: scores 0–10 in unit steps, token lengths up to 4,096 in steps of 128.
SCORE_BINS = 11
LENGTH_BIN = 128
LENGTH_BINS = 33  # the last bin collects everything ≥ 4,096
ROLES = ("system", "user", "assistant")  # Message.role


@dataclass
class SubsetOutput:
    """What writing one subset produced."""

    shards: list[str]
    counts: SubsetCounts
    score_hist: list[int]
    failed_scores: int
    length_hist: list[int]
    arrow_bytes: int = 0  # the shards' size as Arrow in memory (`num_bytes` of the card's split info)
    # set (`default`/`unsafe`) → a function giving its sorted, deduplicated JSON lines, re-readable
    gated: dict[str, Callable[[], Iterator[str]]] = field(default_factory=dict)


def public_columns(spec: SubsetSpec) -> list[str]:
    """The public fields a subset's Parquet carries: SPEC §3 minus the gated one and the absent ones."""
    drop = set()
    if spec.responses_per_instruction.en == 0:
        drop.add("synthesized_assistant_responses_en")
    if not spec.multiturn:
        drop.add("synthesized_multiturn_conversation")
    return [f for f in PUBLIC_FIELDS if f not in drop]


def arrow_schema(spec: SubsetSpec):  # noqa: ANN201 — pyarrow is imported lazily
    """The fixed Arrow schema of a subset's shards."""
    import pyarrow as pa

    types = _field_types()
    return pa.schema([(name, types[name]) for name in public_columns(spec)])


def _field_types() -> dict:
    """The Arrow type of every SynthRecord field, public and gated."""
    import pyarrow as pa

    msg = pa.struct([("role", pa.string()), ("content", pa.string())])
    annotation = pa.struct(
        [
            ("response_token_length", pa.int64()),
            ("judgement", pa.string()),
            ("repetition_flag", pa.bool_()),
            ("preference_score", pa.float64()),
        ]
    )
    return {
        "conversation_id": pa.string(),
        "duplicate_user_instruction_ja": pa.string(),
        "empty_user_instruction_ja": pa.bool_(),
        "translated_conversation": pa.list_(msg),
        "is_template_instruction": pa.string(),
        "synthesized_assistant_responses": pa.list_(msg),
        "synthesized_response_scoring_annotations": pa.list_(annotation),
        "synthesized_assistant_responses_en": pa.list_(msg),
        "synthesized_multiturn_conversation": pa.list_(pa.list_(msg)),
    }


def input_files(path: RunInput | Path, subdir: str = RUN_RECORDS_DIR) -> list[RunInput]:
    """The JSONL files of a run folder's `subdir`, a folder of shards, or a single file (name order)."""
    path = as_input(path)
    if (sub := path.child(subdir)).is_dir():
        path = sub
    elif subdir == RUN_UNSAFE_DIR:
        return []
    if path.is_dir():
        return path.files("*.jsonl*")
    if not path.is_file():
        raise InputRecordError(path, None, None, "no such file or folder")
    return [path]


def write_subset(
    spec: SubsetSpec,
    *,
    records: RunInput | Path,
    tree: Path,
    work: Path,
    shard_bytes: int = SHARD_BYTES,
    rows_per_group: int = ROWS_PER_GROUP,
) -> SubsetOutput:
    """Write the public shards of `spec` under `tree` and its gated plaintexts under `work`.

    Raises:
        InputRecordError: a line is malformed, misses a field, repeats a `conversation_id`, or carries a
            field the subset does not publish (names the file, line and field).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    records = as_input(records)
    schema = arrow_schema(spec)
    full = full_schema()
    parse = pj.ParseOptions(explicit_schema=full, unexpected_field_behavior="error")
    out_dir = tree / layout.DATA_DIR / spec.config
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(("records", "instructions_ja", "responses_ja", "responses_en", "multiturn"), 0)
    score_hist = np.zeros(SCORE_BINS, dtype=np.int64)
    length_hist = np.zeros(LENGTH_BINS, dtype=np.int64)
    failed = 0
    arrow_bytes = 0
    default_sorter = _ExternalSort(work / f"{spec.config}.default")
    seen: set[int] = set()  # 8-byte digests of the ids: duplicates are confirmed by a rescan
    parts: list[Path] = []
    writer = sink = None
    batch: list[bytes] = []
    where: list[tuple[RunInput, int]] = []
    batch_bytes = 0
    group_bytes = max(1, min(GROUP_BYTES, shard_bytes // 4))

    def flush() -> None:
        nonlocal writer, sink, failed, batch_bytes, arrow_bytes
        batch_bytes = 0
        if not batch:
            return
        # Validate the batch in bulk (Arrow types + the model's constraints); only a batch that fails is
        # validated line by line, which names the file, line and field of the first bad record.
        table = _read_bulk(batch, parse)
        if table is None or not _bulk_valid(spec, table):
            table = _read_slow(spec, batch, where, full)
        ids = table.column("conversation_id").to_pylist()
        for i, cid in enumerate(ids):
            digest = _id_digest(cid)
            if digest in seen:
                first = _first_occurrence(records, cid, before=where[i])
                if first is not None:
                    raise InputRecordError(
                        where[i][0],
                        where[i][1],
                        "conversation_id",
                        f"duplicate of {first[0].name} line {first[1]} ({cid})",
                    )
            seen.add(digest)
        _count(table, counts, multiturn=spec.multiturn)
        for cid, conv in zip(ids, table.column("translated_conversation").to_pylist(), strict=True):
            default_sorter.add(cid, _gated_line(cid, conv))
        public = table.select(schema.names)
        if spec.multiturn:
            col = schema.names.index("synthesized_multiturn_conversation")
            blanked = [_public_multiturn(c) for c in public.column(col).to_pylist()]
            public = public.set_column(col, schema.field(col), pa.array(blanked, type=schema.field(col).type))
        if writer is None:
            parts.append(out_dir / f".part-{len(parts):05d}.parquet")
            sink = open(parts[-1], "wb")
            writer = pq.ParquetWriter(sink, schema, compression="zstd", write_statistics=False)
        writer.write_table(public, row_group_size=len(batch))
        arrow_bytes += public.nbytes
        failed += _accumulate(public, score_hist, length_hist)
        batch.clear()
        where.clear()
        if sink.tell() >= shard_bytes:
            writer.close()
            sink.close()
            writer = sink = None

    for path, lineno, raw in track(_iter_raw(records), f"Reading {spec.config}", unit="records"):
        batch.append(raw if raw.endswith(b"\n") else raw + b"\n")
        where.append((path, lineno))
        batch_bytes += len(raw)
        if len(batch) >= rows_per_group or batch_bytes >= group_bytes:
            flush()
    flush()
    if writer is not None:
        writer.close()
        sink.close()
    shards = []
    for i, part in enumerate(parts):
        name = layout.shard_path(spec.config, i, len(parts))
        os.replace(part, tree / name)
        shards.append(name)
    seen.clear()

    if counts["records"] == 0:
        raise InputRecordError(
            _records_name(records), None, None, f"holds no records; refusing to release subset `{spec.config}` empty"
        )
    gated: dict[str, Callable[[], Iterator[str]]] = {}
    unsafe_sorter = _ExternalSort(work / f"{spec.config}.unsafe")
    if "unsafe" in spec.encrypt:
        for path in input_files(records, RUN_UNSAFE_DIR):
            for lineno, line in _numbered(path):
                rec = parse_line(line, SynthRecord, path=path, lineno=lineno)
                g = GatedInstruction(
                    conversation_id=rec.conversation_id, translated_conversation=rec.translated_conversation
                )
                unsafe_sorter.add(rec.conversation_id, g.model_dump_json())
    gated["default"] = lambda: _dedupe(default_sorter.sorted())
    n_default = sum(1 for _ in gated["default"]())
    n_unsafe = 0
    if "unsafe" in spec.encrypt:
        gated["unsafe"] = lambda: _dedupe(heapq.merge(default_sorter.sorted(), unsafe_sorter.sorted()))
        n_unsafe = sum(1 for _ in gated["unsafe"]())
    return SubsetOutput(
        shards=shards,
        counts=SubsetCounts(**counts, gated_default=n_default, gated_unsafe=n_unsafe),
        score_hist=score_hist.tolist(),
        failed_scores=failed,
        length_hist=length_hist.tolist(),
        arrow_bytes=arrow_bytes,
        gated=gated,
    )


# Private helpers


def _id_digest(conversation_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(conversation_id.encode(), digest_size=8).digest(), "little")


def _first_occurrence(
    records: RunInput, conversation_id: str, *, before: tuple[RunInput, int]
) -> tuple[RunInput, int] | None:
    """Where `conversation_id` first appears before `before` (None: the digest collided, not the id)."""
    needle = json.dumps(conversation_id)
    for path in input_files(records):
        for lineno, line in _numbered(path):
            if (path, lineno) == before:
                return None
            text = line.decode("utf-8", errors="replace")
            if needle in text and json.loads(text).get("conversation_id") == conversation_id:
                return path, lineno
    return None


def _numbered(path: RunInput) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open() as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield lineno, line
    except OSError as e:
        raise InputRecordError(path, None, None, f"cannot read: {e.strerror or e}") from e


def _iter_raw(records: RunInput) -> Iterator[tuple[RunInput, int, bytes]]:
    for path in input_files(records):
        for lineno, line in _numbered(path):
            yield path, lineno, line


def _parse_one(line: bytes, path: RunInput, lineno: int) -> SynthRecord:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputRecordError(path, lineno, None, f"not UTF-8 ({e.reason})") from e
    return parse_line(text.rstrip("\r\n"), SynthRecord, path=path, lineno=lineno)


def full_schema():  # noqa: ANN201 — pyarrow is imported lazily
    """The Arrow schema of a whole SynthRecord line (public and gated fields): what a batch is read with."""
    import pyarrow as pa

    types = _field_types()
    return pa.schema([(name, types[name]) for name in SynthRecord.model_fields])


# SynthRecord fields that cannot be null (they may be absent: then their default applies).
_NOT_NULL = tuple(name for name, f in SynthRecord.model_fields.items() if type(None) not in get_args(f.annotation))


def _read_bulk(batch: list[bytes], parse):  # noqa: ANN001, ANN202
    """The batch as one Arrow table with the full schema, or None when Arrow cannot read it as such."""
    import pyarrow as pa
    import pyarrow.json as pj

    data = b"".join(batch)
    try:
        table = pj.read_json(
            io.BytesIO(data), read_options=pj.ReadOptions(block_size=len(data) + 1), parse_options=parse
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return None
    return table if table.num_rows == len(batch) else None


def _bulk_valid(spec: SubsetSpec, table) -> bool:  # noqa: ANN001
    """Whether every row satisfies SynthRecord's constraints and the subset's field rules (vectorised)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    roles = pa.array(ROLES)

    def ok(mask) -> bool:  # noqa: ANN001
        return bool(pc.all(pc.fill_null(mask, False)).as_py() if len(mask) else True)

    def messages_ok(flat) -> bool:  # noqa: ANN001
        role, content = pc.struct_field(flat, "role"), pc.struct_field(flat, "content")
        return ok(pc.is_in(role, value_set=roles)) and content.null_count == 0 and flat.null_count == 0

    # Arrow reads a missing key and an explicit null alike; only the line-by-line parse tells them apart.
    if any(table.column(name).null_count for name in _NOT_NULL):
        return False
    cid = table.column("conversation_id")
    if not ok(pc.greater_equal(pc.utf8_length(cid), 1)):
        return False
    for name in ("translated_conversation", "synthesized_assistant_responses", "synthesized_assistant_responses_en"):
        if not messages_ok(pc.list_flatten(table.column(name))):
            return False
    if not messages_ok(pc.list_flatten(pc.list_flatten(table.column("synthesized_multiturn_conversation")))):
        return False
    ann = pc.list_flatten(table.column("synthesized_response_scoring_annotations"))
    if ann.null_count or any(pc.struct_field(ann, f).null_count for f in ("response_token_length", "judgement")):
        return False
    if pc.struct_field(ann, "repetition_flag").null_count:
        return False
    if not ok(pc.greater_equal(pc.struct_field(ann, "response_token_length"), 0)):
        return False
    n_ann = pc.fill_null(pc.list_value_length(table.column("synthesized_response_scoring_annotations")), 0)
    n_resp = pc.fill_null(pc.list_value_length(table.column("synthesized_assistant_responses")), 0)
    if not ok(pc.equal(n_ann, n_resp)):
        return False
    if spec.responses_per_instruction.en == 0:
        if pc.max(pc.list_value_length(table.column("synthesized_assistant_responses_en"))).as_py():
            return False
    if not spec.multiturn:
        if pc.max(pc.list_value_length(table.column("synthesized_multiturn_conversation"))).as_py():
            return False
    return True


def _read_slow(spec: SubsetSpec, batch: list[bytes], where: list[tuple[RunInput, int]], full):  # noqa: ANN001, ANN202
    """Validate a batch line by line (raises the first bad line's error); the table of the validated records."""
    import pyarrow as pa

    rows = []
    for line, (path, lineno) in zip(batch, where, strict=True):
        rec = _parse_one(line, path, lineno)
        _check_fields(spec, rec, path, lineno)
        rows.append(rec.model_dump(mode="json"))
    return pa.Table.from_pylist(rows, schema=full)


def _count(table, counts: dict[str, int], *, multiturn: bool) -> None:  # noqa: ANN001
    import pyarrow.compute as pc

    def total(name: str) -> int:
        return int(pc.sum(pc.fill_null(pc.list_value_length(table.column(name)), 0)).as_py() or 0)

    empty = pc.fill_null(table.column("empty_user_instruction_ja"), False)
    no_dup = pc.is_null(table.column("duplicate_user_instruction_ja"))
    counts["records"] += table.num_rows
    counts["instructions_ja"] += int(pc.sum(pc.and_(pc.invert(empty), no_dup)).as_py() or 0)
    counts["responses_ja"] += total("synthesized_assistant_responses")
    counts["responses_en"] += total("synthesized_assistant_responses_en")
    if multiturn:
        for convs in table.column("synthesized_multiturn_conversation").to_pylist():
            counts["multiturn"] += any(sum(m["role"] == "user" for m in c) >= 2 for c in convs or [])


def _gated_line(conversation_id: str, conversation: list[dict] | None) -> str:
    """One line of the gated files (`GatedInstruction`, compact JSON as pydantic writes it)."""
    return json.dumps(
        {"conversation_id": conversation_id, "translated_conversation": conversation or []},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _check_fields(spec: SubsetSpec, rec: SynthRecord, path: RunInput, lineno: int) -> None:
    if spec.responses_per_instruction.en == 0 and rec.synthesized_assistant_responses_en:
        raise InputRecordError(
            path, lineno, "synthesized_assistant_responses_en", f"subset `{spec.config}` publishes no EN responses"
        )
    if not spec.multiturn and rec.synthesized_multiturn_conversation:
        raise InputRecordError(
            path, lineno, "synthesized_multiturn_conversation", f"subset `{spec.config}` is not a multiturn subset"
        )
    if len(rec.synthesized_response_scoring_annotations) != len(rec.synthesized_assistant_responses):
        raise InputRecordError(
            path, lineno, "synthesized_response_scoring_annotations", "must have one entry per response"
        )


def _public_multiturn(convs: list | None) -> list[list[dict]] | None:
    """Blank the first user turn: its text is the gated JA instruction, which recovery puts back."""
    if convs is None:
        return None
    out = []
    for conv in convs:
        msgs = [{"role": m["role"], "content": m["content"]} for m in conv]
        for m in msgs:
            if m["role"] == "user":
                m["content"] = ""
                break
        out.append(msgs)
    return out


def _accumulate(table, score_hist, length_hist) -> int:  # noqa: ANN001
    """Add a batch's scores and token lengths to the histograms; return its failed (None) scores."""
    import numpy as np
    import pyarrow.compute as pc

    ann = pc.list_flatten(table.column("synthesized_response_scoring_annotations"))
    scores = pc.struct_field(ann, "preference_score").to_numpy(zero_copy_only=False)
    lengths = pc.struct_field(ann, "response_token_length").to_numpy(zero_copy_only=False)
    ok = ~np.isnan(scores)
    score_hist += np.bincount(np.clip(np.rint(scores[ok]), 0, SCORE_BINS - 1).astype(np.int64), minlength=SCORE_BINS)
    length_hist += np.bincount(
        np.clip(lengths // LENGTH_BIN, 0, LENGTH_BINS - 1).astype(np.int64), minlength=LENGTH_BINS
    )
    return int((~ok).sum())


class _ExternalSort:
    """Sort `(key, line)` pairs by key with sorted runs spilled to disk."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.buffer: list[tuple[str, str]] = []
        self.runs: list[Path] = []

    def add(self, key: str, line: str) -> None:
        self.buffer.append((key, line))
        if len(self.buffer) >= SPILL_LINES:
            self._spill()

    def sorted(self) -> Iterator[tuple[str, str]]:
        if not self.runs:  # it all fits in memory: no plaintext file at all
            self.buffer.sort()
            return iter(list(self.buffer))
        if self.buffer:
            self._spill()
        return heapq.merge(*(self._read(run) for run in self.runs))

    def _spill(self) -> None:
        self.buffer.sort()
        run = self.prefix.with_name(f"{self.prefix.name}.run{len(self.runs):04d}")
        with open(run, "w", encoding="utf-8") as f:
            for key, line in self.buffer:
                f.write(json.dumps([key, line], ensure_ascii=False) + "\n")
        self.runs.append(run)
        self.buffer = []

    @staticmethod
    def _read(run: Path) -> Iterator[tuple[str, str]]:
        with open(run, encoding="utf-8") as f:
            for line in f:
                key, value = json.loads(line)
                yield key, value


def _dedupe(pairs: Iterator[tuple[str, str]]) -> Iterator[str]:
    last = None
    for key, line in pairs:
        if key != last:
            yield line
        last = key


def gz_chunks(lines: Iterator[str]) -> Iterator[bytes]:
    """The gzip bytes of `lines` (one per line), as they are compressed; deterministic (mtime 0, no name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        for line in lines:
            gz.write((line + "\n").encode("utf-8"))
            if buf.tell() >= 1 << 16:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
    yield buf.getvalue()


def _records_name(records: RunInput | Path) -> RunInput:
    """The file to name for a subset with no records: the single file, else the folder of record shards."""
    records = as_input(records)
    files = input_files(records)
    if len(files) == 1:
        return files[0]
    sub = records.child(RUN_RECORDS_DIR)
    return sub if sub.is_dir() else records
