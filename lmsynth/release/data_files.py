"""Stream a subset's SynthRecords into public Parquet shards and sorted gated JSONL, with no per-line Python.

The input is read in large blocks and cut into row groups (`ROWS_PER_GROUP` lines, fewer past
`GROUP_BYTES`) with numpy; each group is parsed by pyarrow's JSON reader with the full SynthRecord schema
and validated in bulk with Arrow compute. Only a group that fails is validated line by line with
`SynthRecord`, so a bad line still stops the build with the file, line and field. Groups are parsed by a
small thread pool while the Parquet writer runs. A group is one row group; a shard is closed when it passes
`shard_bytes` and shards are renamed to `train-0000i-of-0000N.parquet` once N is known. The same input gives
the same bytes: the schema is fixed, rows keep input order, and nothing time-dependent is written.

The gated instructions (ids and JA conversations, about 150 bytes a record) stay in memory as Arrow arrays
and are sorted by `conversation_id` there; their JSON lines are built with Arrow compute a chunk at a time
in sorted order (`GatedLines`) and never touch the disk as plaintext: the release streams them into gzip
and gpg.
"""

from __future__ import annotations

import gzip
import io
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from lmsynth import progress
from lmsynth.errors import InputRecordError
from lmsynth.io import parse_line
from lmsynth.records import PUBLIC_FIELDS, RUN_RECORDS_DIR, RUN_UNSAFE_DIR, SynthRecord
from lmsynth.release.inputs import RunInput, as_input
from lmsynth.release.release_yaml import SubsetSpec
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import SubsetCounts


ROWS_PER_GROUP = 1_000
GROUP_BYTES = 64 * 2**20  # a row group also ends at this much input JSON (bounds memory for long records)
SHARD_BYTES = 512 * 2**20
READ_BYTES = 16 * 2**20  # input read at once
PARSE_THREADS = 2  # groups parsed at once (pyarrow's JSON reader releases the GIL)
PARSE_AHEAD = 2  # groups parsed ahead of the writer (bounds memory: a group is ~16 MB of input)
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
    # set (`default`/`unsafe`) → its sorted, deduplicated JSON lines
    gated: dict[str, GatedLines] = field(default_factory=dict)


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
    shard_bytes: int = SHARD_BYTES,
    rows_per_group: int = ROWS_PER_GROUP,
) -> SubsetOutput:
    """Write the public shards of `spec` under `tree` and return its gated sets, sorted, in memory.

    Three streams overlap: this thread reads the input in large blocks and cuts it into row groups, a pool
    of `PARSE_THREADS` parses and validates groups ahead (pyarrow releases the GIL), and the Parquet writer
    (zstd, also outside the GIL) runs here while they do. No gated plaintext touches the disk.

    Raises:
        InputRecordError: a line is malformed, misses a field, repeats a `conversation_id`, or carries a
            field the subset does not publish (names the file, line and field).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    records = as_input(records)
    files = input_files(records)
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
    parts: list[Path] = []
    gated_parts: list = []  # (conversation_id, translated_conversation) of every group, in input order
    where_parts: list[tuple[np.ndarray, np.ndarray]] = []  # (file index, line number) of every record
    writer = sink = None
    group_bytes = max(1, min(GROUP_BYTES, shard_bytes // 4))

    def parsed(group: _Group):  # noqa: ANN202 — runs in the pool
        # Validate the group in bulk (Arrow types + the model's constraints); only a group that fails is
        # validated line by line, which names the file, line and field of the first bad record.
        table = _read_bulk(group.data, group.rows, parse)
        if table is None or not _bulk_valid(spec, table):
            table = _read_slow(spec, group.lines(), group.where(files), full)
        return table

    def write(table, rows: int) -> None:  # noqa: ANN001
        nonlocal writer, sink, failed, arrow_bytes
        _count(table, counts, multiturn=spec.multiturn)
        ids, conv = table.column("conversation_id").combine_chunks(), table.column("translated_conversation")
        conv = conv.combine_chunks()
        # Exact-size copies: views would pin the parser's (over-allocated) buffers for the whole build.
        gated_parts.append((_compact(ids), _compact(conv)))
        public = table.select(schema.names)
        if spec.multiturn:
            col = schema.names.index("synthesized_multiturn_conversation")
            blanked = [_public_multiturn(c) for c in public.column(col).to_pylist()]
            public = public.set_column(col, schema.field(col), pa.array(blanked, type=schema.field(col).type))
        if writer is None:
            parts.append(out_dir / f".part-{len(parts):05d}.parquet")
            sink = open(parts[-1], "wb")  # noqa: SIM115 — closed when the shard is full, or below
            writer = pq.ParquetWriter(sink, schema, compression="zstd", write_statistics=False)
        writer.write_table(public, row_group_size=rows)
        arrow_bytes += public.nbytes
        failed += _accumulate(public, score_hist, length_hist)
        if sink.tell() >= shard_bytes:
            writer.close()
            sink.close()
            writer = sink = None

    with progress.task(f"Reading {spec.config}") as advance, ThreadPoolExecutor(PARSE_THREADS) as pool:
        ahead: deque = deque()

        def write_next() -> None:  # the parsed table is dropped on return, not held until the next one
            future, rows = ahead.popleft()
            write(future.result(), rows)
            advance(rows)

        try:
            for group in _groups(files, rows_per_group=rows_per_group, group_bytes=group_bytes):
                where_parts.append((group.file_index, group.linenos))
                ahead.append((pool.submit(parsed, group), group.rows))
                del group
                while len(ahead) > PARSE_AHEAD or (ahead and ahead[0][0].done()):
                    write_next()
            while ahead:
                write_next()
        finally:
            for future, _ in ahead:
                future.cancel()
            if writer is not None:
                writer.close()
                sink.close()
    shards = []
    for i, part in enumerate(parts):
        name = layout.shard_path(spec.config, i, len(parts))
        os.replace(part, tree / name)
        shards.append(name)

    if counts["records"] == 0:
        raise InputRecordError(
            _records_name(records), None, None, f"holds no records; refusing to release subset `{spec.config}` empty"
        )
    pa.default_memory_pool().release_unused()  # the parsed groups' memory, back to the system
    keys, convs = (pa.chunked_array([part[i] for part in gated_parts]) for i in range(2))
    gated_parts.clear()
    order = pc.sort_indices(keys)
    _check_unique(keys.take(order), order, files, where_parts)
    default = GatedLines(keys=keys, convs=convs, order=order)
    gated = {"default": default}
    if "unsafe" in spec.encrypt:
        gated["unsafe"] = default.merged(_unsafe_pairs(records))
    return SubsetOutput(
        shards=shards,
        counts=SubsetCounts(
            **counts, gated_default=len(default), gated_unsafe=len(gated["unsafe"]) if "unsafe" in gated else 0
        ),
        score_hist=score_hist.tolist(),
        failed_scores=failed,
        length_hist=length_hist.tolist(),
        arrow_bytes=arrow_bytes,
        gated=gated,
    )


# Private helpers


@dataclass
class _Group:
    """The lines of one row group: their bytes back to back (blank lines may sit between them) and their places."""

    data: bytes | memoryview
    starts: Any  # numpy: where each record's line starts in `data`
    ends: Any
    file_index: Any  # numpy: the file (index into the input files) and line number of each record
    linenos: Any

    @property
    def rows(self) -> int:
        return len(self.starts)

    def lines(self) -> list[bytes]:
        return [bytes(self.data[s:e]) for s, e in zip(self.starts.tolist(), self.ends.tolist(), strict=True)]

    def where(self, files: list[RunInput]) -> list[tuple[RunInput, int]]:
        return [(files[f], n) for f, n in zip(self.file_index.tolist(), self.linenos.tolist(), strict=True)]


def _blocks(path: RunInput) -> Iterator[tuple[memoryview, Any, Any, Any, Any]]:
    """A file's non-blank lines, `READ_BYTES` at a time: (block, starts, ends, sizes as read, line numbers).

    Lines split at newlines only, as Python's file iteration does; a last line without one gets one (its size as
    read does not count it). A blank line (whitespace only) is skipped but counted in the line numbers.
    """
    import numpy as np

    lineno = 0
    try:
        with path.open() as f:
            carry = b""
            while True:
                # A fresh block per read (groups still being parsed point into the previous ones).
                whole = bytearray(len(carry) + READ_BYTES)
                whole[: len(carry)] = carry
                got = f.readinto(memoryview(whole)[len(carry) :])
                missing_newline = False
                if got:
                    end = len(carry) + got
                    cut = whole.rfind(b"\n", 0, end) + 1
                    carry = bytes(whole[cut:end])
                    if not cut:
                        continue
                    buf = memoryview(whole)[:cut]
                elif carry:
                    buf, carry, missing_newline = memoryview(carry + b"\n"), b"", True
                else:
                    return
                arr = np.frombuffer(buf, dtype=np.uint8)
                ends = np.flatnonzero(arr == 10) + 1
                starts = np.empty_like(ends)
                starts[0], starts[1:] = 0, ends[:-1]
                linenos = np.arange(lineno + 1, lineno + 1 + len(ends), dtype=np.int64)
                lineno += len(ends)
                sizes = ends - starts
                if missing_newline:
                    sizes[-1] -= 1
                # A record's line starts with "{": only lines that start with whitespace can be blank.
                maybe = np.flatnonzero(np.isin(arr[starts], _WHITESPACE)).tolist()
                blank = [i for i in maybe if not bytes(buf[starts[i] : ends[i]]).strip()]
                if blank:
                    keep = np.ones(len(starts), dtype=bool)
                    keep[blank] = False
                    starts, ends, sizes, linenos = starts[keep], ends[keep], sizes[keep], linenos[keep]
                if len(starts):
                    yield buf, starts, ends, sizes, linenos
    except OSError as e:
        raise InputRecordError(path, None, None, f"cannot read: {e.strerror or e}") from e


_WHITESPACE = list(b" \t\n\r\x0b\x0c")  # what bytes.strip() removes


def _groups(files: list[RunInput], *, rows_per_group: int, group_bytes: int) -> Iterator[_Group]:
    """Cut the records of `files` into row groups: `rows_per_group` lines, or fewer once they hold `group_bytes`.

    A group ends at the first line that brings it to either limit, across file ends, exactly as a loop over
    the lines would cut it; the cut points are found per group with `searchsorted`, not per line.
    """
    import numpy as np

    pending: list[tuple[memoryview, Any, Any, int, Any]] = []
    pending_rows = pending_bytes = 0

    def emit() -> _Group:
        nonlocal pending, pending_rows, pending_bytes
        datas, starts, ends, fidx, lines = [], [], [], [], []
        base = 0
        for block, s, e, fi, ln in pending:
            lo, hi = int(s[0]), int(e[-1])
            datas.append(block[lo:hi])
            starts.append(s - lo + base)
            ends.append(e - lo + base)
            fidx.append(np.full(len(s), fi, dtype=np.int32))
            lines.append(ln)
            base += hi - lo
        data = datas[0] if len(datas) == 1 else b"".join(datas)  # within one block: no copy
        group = _Group(data, *(np.concatenate(x) for x in (starts, ends, fidx, lines)))
        pending, pending_rows, pending_bytes = [], 0, 0
        return group

    for fi, path in enumerate(files):
        for block, starts, ends, sizes, linenos in _blocks(path):
            csum = np.cumsum(sizes)
            pos, n = 0, len(starts)
            while pos < n:
                base = int(csum[pos - 1]) if pos else 0
                by_bytes = int(np.searchsorted(csum, base + group_bytes - pending_bytes, side="left")) - pos + 1
                k = min(rows_per_group - pending_rows, by_bytes)
                take = min(k, n - pos)
                pending.append(
                    (block, starts[pos : pos + take], ends[pos : pos + take], fi, linenos[pos : pos + take])
                )
                pending_rows += take
                pending_bytes += int(csum[pos + take - 1]) - base
                pos += take
                if take == k:
                    yield emit()
    if pending:
        yield emit()


def _check_unique(sorted_ids, order, files: list[RunInput], where: list[tuple[Any, Any]]) -> None:  # noqa: ANN001
    """Refuse a repeated `conversation_id`, naming its first repeat in input order and where it first appeared."""
    import numpy as np

    same = _same_as_previous(sorted_ids)
    if not same.any():
        return
    pos = order.to_numpy()
    repeats = np.flatnonzero(same) + 1
    i = int(repeats[np.argmin(pos[repeats])])
    first = _run_start(same, i)  # the sort is stable: a run of one id is in input order
    fidx = np.concatenate([w[0] for w in where])
    lines = np.concatenate([w[1] for w in where])
    at, was = int(pos[i]), int(pos[first])
    raise InputRecordError(
        files[fidx[at]],
        int(lines[at]),
        "conversation_id",
        f"duplicate of {files[fidx[was]].name} line {int(lines[was])} ({sorted_ids[i].as_py()})",
    )


def _same_as_previous(sorted_ids):  # noqa: ANN001, ANN202
    """Where each sorted row repeats the id before it: `same[i]` when row `i + 1` has the id of row `i`."""
    import numpy as np
    import pyarrow.compute as pc

    n = len(sorted_ids)
    if n < 2:
        return np.zeros(0, dtype=bool)
    return pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)


def _run_start(same, i: int) -> int:  # noqa: ANN001
    """The first sorted row of the run of one id that row `i` belongs to."""
    while i > 0 and same[i - 1]:
        i -= 1
    return i


def _unsafe_pairs(records: RunInput) -> list[tuple[str, list[dict]]]:
    """(id, messages) of the moderation-flagged records (a hundredth of a run: read line by line)."""
    pairs = []
    for path in input_files(records, RUN_UNSAFE_DIR):
        for lineno, line in _numbered(path):
            rec = parse_line(line, SynthRecord, path=path, lineno=lineno)
            pairs.append((rec.conversation_id, [m.model_dump() for m in rec.translated_conversation]))
    return pairs


# json.dumps(ensure_ascii=False) escapes these, and nothing else.
_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"} | {
    chr(c): f"\\u{c:04x}" for c in range(0x20) if chr(c) not in "\b\f\n\r\t"
}


def _json_strings(arr):  # noqa: ANN001, ANN202
    """`json.dumps(s, ensure_ascii=False)` of every string of `arr`, vectorised."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = arr.cast(pa.large_string())
    if len(arr) and pc.any(pc.match_substring_regex(arr, r'[\x00-\x1f"\\]')).as_py():
        for char, escaped in _JSON_ESCAPES.items():  # the backslash first
            arr = pc.replace_substring(arr, char, escaped)
    return _concat('"', arr, '"')


def _compact(arr):  # noqa: ANN001, ANN202
    """A copy of `arr` in buffers of its exact size."""
    import pyarrow as pa

    return pa.concat_arrays([arr, arr.slice(0, 0)])


def _concat(*parts):  # noqa: ANN002, ANN202
    """Element-wise concatenation of large_string arrays and literal strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = [pa.scalar(p, pa.large_string()) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string()))


def _json_lines(ids, conversations):  # noqa: ANN001, ANN202
    """Every row's `GatedInstruction` line, with its newline: `json.dumps(..., ensure_ascii=False)`, compact."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    flat = pc.list_flatten(conversations)
    role, content = (_json_strings(pc.struct_field(flat, name)) for name in ("role", "content"))
    items = _concat('{"role":', role, ',"content":', content, "}")
    lengths = pc.fill_null(pc.list_value_length(conversations), 0).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), type=pa.int64())
    joined = pc.binary_join(pa.LargeListArray.from_arrays(offsets, items), pa.scalar(",", pa.large_string()))
    return _concat('{"conversation_id":', _json_strings(ids), ',"translated_conversation":[', joined, "]}\n")


LINES_PER_CHUNK = 1 << 14  # gated lines gathered in sorted order at once


@dataclass(frozen=True)
class GatedLines:
    """A gated set: ids and JA conversations in input order, and the order that sorts them (one row per id).

    Calling it yields the sorted `GatedInstruction` lines as strings; `chunks()` gives the plaintext bytes (what
    is gzipped and encrypted), built `LINES_PER_CHUNK` lines at a time in sorted order, so no whole plaintext
    is ever in memory; `texts()` are the instruction texts the leak guard indexes.
    """

    keys: Any  # pyarrow ChunkedArray: the conversation ids, input order
    convs: Any  # pyarrow ChunkedArray: their translated conversations
    order: Any  # pyarrow UInt64Array: the rows of the set, sorted by id, one per id

    def merged(self, pairs: list[tuple[str, list[dict]]]) -> GatedLines:
        """This set plus `(id, messages)` rows; for an id in both, the smaller line (as a sorted merge keeps)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        keys = pa.chunked_array([*self.keys.chunks, pa.array([k for k, _ in pairs], type=self.keys.type)])
        convs = pa.chunked_array([*self.convs.chunks, pa.array([m for _, m in pairs], type=self.convs.type)])
        order = pc.sort_indices(keys).to_numpy()
        keep = np.ones(len(order), dtype=bool)
        if len(order) > 1:
            same = _same_as_previous(keys.take(pa.array(order)))
            # Runs of one id (rare: an id both answered and flagged): keep the row with the smallest line.
            for end in np.flatnonzero(np.diff(np.r_[same, False].astype(np.int8)) == -1) + 1:
                start = _run_start(same, end)
                rows = pa.array(order[start : end + 1])
                lines = _json_lines(keys.take(rows).combine_chunks(), convs.take(rows).combine_chunks()).to_pylist()
                keep[start : end + 1] = False
                keep[start + min(range(len(lines)), key=lines.__getitem__)] = True
        return GatedLines(keys=keys, convs=convs, order=pa.array(order[keep], type=pa.uint64()))

    def __len__(self) -> int:
        return len(self.order)

    def texts(self) -> Iterator[list[str]]:
        """The message texts of every row (unsorted), a row group at a time."""
        import pyarrow.compute as pc

        for chunk in self.convs.chunks:
            yield pc.struct_field(pc.list_flatten(chunk), "content").to_pylist()

    def _sorted_lines(self) -> Iterator:  # noqa: ANN202
        order = self.order.to_numpy()
        for i in range(0, len(order), LINES_PER_CHUNK):
            rows = order[i : i + LINES_PER_CHUNK]
            yield _json_lines(_take(self.keys, rows), _take(self.convs, rows))

    def __call__(self) -> Iterator[str]:
        """The sorted lines, without their newlines."""
        for arr in self._sorted_lines():
            for line in arr.to_pylist():
                yield line[:-1]

    def chunks(self) -> Iterator[bytes]:
        """The sorted plaintext (every line with its newline), a few MB at a time."""
        for arr in self._sorted_lines():
            if (data := string_bytes(arr)) is not None:
                yield data.tobytes()


def string_bytes(arr) -> memoryview | None:  # noqa: ANN001
    """The bytes of every value of an Arrow string array, back to back, without a copy (None when empty)."""
    import numpy as np
    import pyarrow as pa

    if not len(arr) or arr.buffers()[2] is None:
        return None
    width = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset : arr.offset + len(arr) + 1]
    return memoryview(arr.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def _take(arr, rows):  # noqa: ANN001, ANN202
    """`arr.take(rows)` (a ChunkedArray, numpy row numbers) as one array, taken a chunk at a time.

    Arrow's own take concatenates every chunk first: a transient copy of the whole set for each call.
    """
    import numpy as np
    import pyarrow as pa

    if not len(rows):
        return pa.array([], type=arr.type)
    rows = rows.astype(np.int64)
    bounds = np.cumsum([0, *(len(c) for c in arr.chunks)])
    which = np.searchsorted(bounds, rows, side="right") - 1
    by = np.argsort(which, kind="stable")
    cuts = np.flatnonzero(np.diff(which[by])) + 1
    parts = [arr.chunk(int(which[g[0]])).take(pa.array(rows[g] - bounds[which[g[0]]])) for g in np.split(by, cuts)]
    back = np.empty_like(by)
    back[by] = np.arange(len(by))
    return pa.concat_arrays(parts).take(pa.array(back))


def _numbered(path: RunInput) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open() as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield lineno, line
    except OSError as e:
        raise InputRecordError(path, None, None, f"cannot read: {e.strerror or e}") from e


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


def _read_bulk(data: bytes | memoryview, rows: int, parse):  # noqa: ANN001, ANN202
    """A group's lines as one Arrow table with the full schema, or None when Arrow cannot read them as such."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        table = pj.read_json(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pj.ReadOptions(block_size=len(data) + 1),
            parse_options=parse,
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return None
    return table if table.num_rows == rows else None


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
    """Validate a group line by line (raises the first bad line's error); the table of the validated records."""
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


def gz_bytes(plain: Iterable[bytes]) -> Iterator[bytes]:
    """The gzip bytes of `plain`, as they are compressed; deterministic (mtime 0, no name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        for data in plain:
            gz.write(data)
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
