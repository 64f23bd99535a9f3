"""`recover`: rebuild the complete records of a release for a user who holds LMSYS-Chat-1M.

A release ships the synthesized fields in public Parquet and the Japanese instructions encrypted; the
English instruction, `redacted` and `language` never leave LMSYS-Chat-1M. Recovery downloads the tagged
tree, checks every file against MANIFEST.json before anything is decrypted, decrypts the gated files and
merges the three parts by `conversation_id`.

Memory stays flat as the release grows: the public Parquet is read in row batches, and the two keyed
parts (decrypted instructions, which the release sorts by id, and the source, which is in no useful order)
are spilled to an on-disk SQLite store whose primary-key B-tree is the sorted run the merge reads from.
Output rows are written as they are merged.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError

from lmsynth import constants
from lmsynth.config import StrictModel, dotted
from lmsynth.errors import InputRecordError, PassphraseError, VerifyError
from lmsynth.faults import kill_point
from lmsynth.io import atomic_dir, open_text, parse_line, read_jsonl, write_json, write_jsonl
from lmsynth.outdir import check_out, mark, source_input
from lmsynth.progress import track
from lmsynth.records import GatedInstruction, Message, SynthRecord
from lmsynth.scratch import scratch_dir
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import ChecksumManifest, check_tree


logger = logging.getLogger(__name__)

REPORT_FILE = "recover_report.json"
SHARD_ROWS = 50_000  # records per JSONL shard: small enough to open in an editor, few files at 1M rows
_BATCH = 2_000  # rows per Parquet batch and per SQLite insert: bounds memory, amortises call overhead


class RecoveredRecord(SynthRecord):
    """A complete record: the public synthesized fields, the JA instruction and the source's own fields.

    `conversation` is the original first user turn (one message). `redacted` and `language` are None
    when the source lacks the conversation (counted as `missing_in_source`).
    """

    conversation: list[Message] = Field(default_factory=list, description="The original first user turn.")
    redacted: bool | None = Field(None, description="LMSYS `redacted`: names were redacted (PII present).")
    language: str | None = Field(None, description="LMSYS `language` of the conversation.")


class SubsetLicense(StrictModel):
    """The license of a subset's responses, as the release's MANIFEST.json states it."""

    generator: str | None = None
    name: str | None = None
    link: str | None = None


class SubsetRecovery(StrictModel):
    """Counts of one recovered subset."""

    public_rows: int = Field(ge=0, description="Rows in the public Parquet.")
    gated_instructions: int = Field(ge=0, description="JA instructions decrypted (the `+unsafe` set if included).")
    written: int = Field(ge=0, description="Records written.")
    merged: int = Field(ge=0, description="Records with all three parts: public, JA instruction, source row.")
    missing_in_source: int = Field(ge=0, description="Records written without a source row (no EN instruction).")
    missing_instruction: int = Field(ge=0, description="Public rows without a JA instruction (skipped).")
    unsafe_included: int = Field(ge=0, description="Moderation-flagged records written (only with --include-unsafe).")
    failed_scores: int | None = Field(
        None, ge=0, description="Original release: judge failures it wrote as score -1, recovered as null."
    )
    files: list[str] = Field(default_factory=list)
    license: SubsetLicense = Field(default_factory=SubsetLicense)


class RecoverReport(StrictModel):
    """`recover_report.json`: what a recovery read and wrote; export reads the licenses from here."""

    target: str
    revision: str
    commit: str | None = Field(None, description="The Hub commit the release was read at, when pinned.")
    layout: Literal["lmsynth", "original"] = Field(
        "lmsynth", description="`original`: the tokyotech-llm release layout (records keep its extra fields)."
    )
    include_unsafe: bool
    source_rows: int = Field(ge=0)
    subsets: dict[str, SubsetRecovery]


class RecoverResult(StrictModel):
    """What `recover` did."""

    out_dir: Path
    report: RecoverReport


def recover(
    target_uri: str,
    *,
    revision: str,
    source: str | None,
    out_dir: Path | str,
    passphrase: SecretStr | None,
    include_unsafe: bool = False,
) -> RecoverResult:
    """Download a release, check it, decrypt it and merge it with the source into complete records.

    Args:
        target_uri: where the release lives (a folder, `hf://ORG/NAME`, `ms://ORG/NAME`).
        revision: the version tag, e.g. `v0.5`.
        source: LMSYS-Chat-1M (file, folder or hub id); None is the bundled sample.
        out_dir: the folder to write; replaced only when recovery succeeds.
        passphrase: the decryption key; None reads `LMSYNTH_PASSPHRASE` or derives it from `source`.
        include_unsafe: decrypt the `+unsafe` set, which adds the moderation-flagged instructions.

    Returns:
        The output folder and the report also written to `recover_report.json`.

    Raises:
        ChecksumError: the release breaks the tree rule of `lmsynth.tree.manifest_json` (nothing is decrypted).
        PassphraseError: the key does not decrypt the gated files (nothing is written).
        VerifyError: the release has no subset.
    """
    if not revision:
        raise VerifyError("`revision` can't be empty: name the release tag, e.g. v0.5")
    from lmsynth.targets.registry import open_target  # looked up per call: tests stand a plain folder in for it

    shown = Path(out_dir)
    out_dir = check_out(out_dir, kind="recovered", inputs=[source_input(source)], targets=[target_uri])
    # Decrypted instructions and the merge store live in a scratch folder (removed after a kill by the next command).
    with scratch_dir("recover") as work:
        # 1. Fetch the tree and refuse it before any decryption unless it is exactly what MANIFEST.json lists.
        tree = open_target(target_uri).download(revision, work / "tree")
        manifest = check_tree(tree)
        subsets = _subsets(manifest)
        # 2. The key: given, from the environment, or derived from the source (a full streamed pass).
        if passphrase is None:
            from lmsynth.passphrase import resolve_passphrase

            passphrase = resolve_passphrase(
                passphrase_file=None, source=source if source is not None else str(constants.SAMPLE_SOURCE)
            )
        # 3. Decrypt everything first: a wrong key must fail before a single output byte exists.
        store = _Store(work / "store.sqlite")
        try:
            gated_counts = {
                name: _load_gated(
                    store, tree, manifest, name, work=work, passphrase=passphrase, include_unsafe=include_unsafe
                )
                for name in subsets
            }
            source_rows = _load_source(store, source)
            # 4. Merge per subset into the output folder, swapped in only when every subset is done.
            with atomic_dir(out_dir, private=True) as tmp_out:  # gated instructions
                mark(tmp_out, "recovered")
                kill_point("recover.writing", out_dir)
                results = {
                    name: _merge_subset(store, tree, name, out=tmp_out, gated=gated_counts[name]) for name in subsets
                }
                results = {
                    name: res.model_copy(update={"license": _license_of(manifest, name)})
                    for name, res in results.items()
                }
                report = RecoverReport(
                    target=target_uri,
                    revision=revision,
                    include_unsafe=include_unsafe,
                    source_rows=source_rows,
                    subsets=results,
                )
                write_json(tmp_out / REPORT_FILE, report.model_dump(mode="json"))
                shutil.copyfile(tree / layout.MANIFEST_FILE, tmp_out / layout.MANIFEST_FILE)
        finally:
            store.close()
    return RecoverResult(out_dir=shown, report=report)


def iter_recovered(path: Path | str, model: type[RecoveredRecord] | None = None) -> Iterator[RecoveredRecord]:
    """Stream the records of one recovered subset folder (shards in name order) as `model` (RecoveredRecord)."""
    for f in sorted(Path(path).glob("*.jsonl")):
        yield from read_jsonl(f, model or RecoveredRecord)


def restore_multiturn(record: SynthRecord, instruction: str) -> list[list[Message]] | None:
    """Put the JA instruction back into the blank first user turn of each public multiturn conversation."""
    if not record.synthesized_multiturn_conversation:
        return record.synthesized_multiturn_conversation
    restored = []
    for conv in record.synthesized_multiturn_conversation:
        if conv and conv[0].role == "user" and not conv[0].content:
            conv = [Message(role="user", content=instruction), *conv[1:]]
        restored.append(conv)
    return restored


# Private helpers


class _Store:
    """The on-disk sorted store: gated JA instructions and source rows keyed by conversation_id."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        # A scratch database: durability buys nothing, and a bounded page cache keeps memory flat.
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16384; PRAGMA temp_store=FILE;"
            "CREATE TABLE gated (subset TEXT, id TEXT, content TEXT, unsafe INTEGER, PRIMARY KEY (subset, id))"
            " WITHOUT ROWID;"
            "CREATE TABLE source (id TEXT PRIMARY KEY, instruction TEXT, redacted INTEGER, language TEXT)"
            " WITHOUT ROWID;"
            "CREATE TABLE seen (subset TEXT, id TEXT, PRIMARY KEY (subset, id)) WITHOUT ROWID;"
        )

    def close(self) -> None:
        self.db.close()


def _license_of(manifest: ChecksumManifest, subset: str) -> SubsetLicense:
    """The response license of `subset` as MANIFEST.json states it."""
    info = manifest.subsets[subset]
    return SubsetLicense(generator=info.generator.id, name=info.license.display_name, link=info.license.link)


def _subsets(manifest: ChecksumManifest) -> list[str]:
    """Subsets of the release, in name order."""
    if not manifest.subsets:
        raise VerifyError(f"{layout.MANIFEST_FILE}: the release has no subset")
    return sorted(manifest.subsets)


def _gated_file(manifest: ChecksumManifest, subset: str, *, unsafe: bool) -> str:
    """Path of a subset's gated file: as MANIFEST.json names it, else where the layout puts it."""
    return manifest.subsets[subset].gated.get("unsafe" if unsafe else "default") or layout.gated_path(
        subset, unsafe=unsafe
    )


def _load_gated(
    store: _Store,
    tree: Path,
    manifest: ChecksumManifest,
    subset: str,
    *,
    work: Path,
    passphrase: SecretStr,
    include_unsafe: bool,
) -> int:
    """Decrypt a subset's gated file(s) into the store; `+unsafe` rows not in the default set are marked."""
    files = [(tree / _gated_file(manifest, subset, unsafe=False), 0)]
    if include_unsafe:
        files.append((tree / _gated_file(manifest, subset, unsafe=True), 1))
    n = 0
    for path, unsafe in files:
        if not path.is_file():
            raise VerifyError(f"{path.relative_to(tree)}: gated file missing from the release")
        plain = work / f"{subset}.{unsafe}.jsonl.gz"
        _decrypt(path, plain, passphrase=passphrase, tree=tree)
        rows = ((g.conversation_id, _instruction_of(g), unsafe) for g in _read_gated(plain))
        for batch in _batched(rows, _BATCH):
            cur = store.db.executemany(
                "INSERT OR IGNORE INTO gated VALUES (?, ?, ?, ?)", [(subset, i, c, u) for i, c, u in batch]
            )
            n += cur.rowcount
        plain.unlink()
    store.db.commit()
    return n


def _decrypt(src: Path, dst: Path, *, passphrase: SecretStr, tree: Path) -> None:
    from lmsynth.crypto import KEY_HINT, decrypt_file

    try:
        decrypt_file(src, dst, passphrase=passphrase)
    except PassphraseError:
        # The download folder is temporary: name the file as it sits in the release.
        raise PassphraseError(f"the passphrase does not decrypt {src.relative_to(tree)}; {KEY_HINT}") from None


def _read_gated(path: Path) -> Iterator[GatedInstruction]:
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield parse_line(line, GatedInstruction, path=path, lineno=lineno)


def _instruction_of(g: GatedInstruction) -> str:
    return g.translated_conversation[0].content if g.translated_conversation else ""


def _load_source(store: _Store, source: str | None) -> int:
    """Spill (id, first user turn, redacted, language) of every source row into the sorted store."""
    from lmsynth.source import open_source

    rows = (
        (c.conversation_id, c.first_user_content, int(c.redacted), c.language)
        for c in track(open_source(source), "Reading the source")
    )
    n = 0
    for batch in _batched(rows, _BATCH):
        store.db.executemany("INSERT OR IGNORE INTO source VALUES (?, ?, ?, ?)", batch)
        n += len(batch)
    store.db.commit()
    return n


def _iter_public(tree: Path, subset: str) -> Iterator[SynthRecord]:
    """Stream the public rows of a subset, batch by batch, as SynthRecords."""
    import pyarrow.parquet as pq

    fields = set(SynthRecord.model_fields)
    for shard in sorted((tree / layout.DATA_DIR / subset).glob("*.parquet")):
        pf = pq.ParquetFile(shard)
        index = 0
        for batch in pf.iter_batches(batch_size=_BATCH):
            for row in batch.to_pylist():
                index += 1
                # Parquet stores an absent value as null: let the model's default stand for it.
                data = {k: v for k, v in row.items() if k in fields and v is not None}
                try:
                    yield SynthRecord.model_validate(data, strict=True)
                except ValidationError as e:
                    first = e.errors()[0]
                    where = f"{shard.relative_to(tree).as_posix()}: row {index}"
                    raise InputRecordError(where, None, dotted(first["loc"]) or None, first["msg"]) from None


def _merge_subset(store: _Store, tree: Path, subset: str, *, out: Path, gated: int) -> SubsetRecovery:
    """Merge public rows with the store and write `out/<subset>/recovered-*.jsonl`."""
    counts = {"public_rows": 0, "merged": 0, "missing_in_source": 0, "missing_instruction": 0, "unsafe_included": 0}
    db = store.db

    def complete(rec: SynthRecord, content: str, unsafe: int) -> RecoveredRecord:
        counts["unsafe_included"] += unsafe
        src = db.execute(
            "SELECT instruction, redacted, language FROM source WHERE id = ?", (rec.conversation_id,)
        ).fetchone()
        extra: dict = {
            "translated_conversation": [Message(role="user", content=content)],
            "synthesized_multiturn_conversation": restore_multiturn(rec, content),
        }
        if src is None:
            counts["missing_in_source"] += 1
        else:
            counts["merged"] += 1
            extra |= {
                "conversation": [Message(role="user", content=src[0])],
                "redacted": bool(src[1]),
                "language": src[2],
            }
        return RecoveredRecord.model_validate(rec.model_dump() | extra)

    def records() -> Iterator[RecoveredRecord]:
        for rec in track(_iter_public(tree, subset), f"Merging {subset}"):
            counts["public_rows"] += 1
            hit = db.execute(
                "SELECT content, unsafe FROM gated WHERE subset = ? AND id = ?", (subset, rec.conversation_id)
            ).fetchone()
            if hit is None:
                counts["missing_instruction"] += 1
                continue
            db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (subset, rec.conversation_id))
            yield complete(rec, *hit)
        # Gated rows with no public row (e.g. the moderation-flagged instructions of the `+unsafe` set,
        # which have no responses): written with their instruction, in id order.
        leftovers = db.execute(
            "SELECT g.id, g.content, g.unsafe FROM gated g LEFT JOIN seen s ON s.subset = g.subset AND s.id = g.id"
            " WHERE g.subset = ? AND s.id IS NULL ORDER BY g.id",
            (subset,),
        )
        for cid, content, unsafe in _cursor_rows(leftovers):
            yield complete(SynthRecord(conversation_id=cid), content, unsafe)

    files = write_shards(records(), out / subset)
    written = counts["merged"] + counts["missing_in_source"]
    return SubsetRecovery(gated_instructions=gated, written=written, files=files, **counts)


def _cursor_rows(cursor: sqlite3.Cursor) -> Iterator[tuple]:
    while rows := cursor.fetchmany(_BATCH):
        yield from rows


def write_shards(records: Iterable[RecoveredRecord], folder: Path) -> list[str]:
    """Write records as `recovered-NNNNN.jsonl` shards of SHARD_ROWS lines; return the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for index, batch in enumerate(_chunks(records, SHARD_ROWS)):
        name = f"recovered-{index:05d}.jsonl"
        write_jsonl(folder / name, batch)
        names.append(name)
    return names


def _chunks(items: Iterable, size: int) -> Iterator[Iterator]:
    """Lazy consecutive chunks of `size` items (each must be consumed before the next is asked for)."""
    it = iter(items)
    while True:
        try:
            first = next(it)
        except StopIteration:
            return
        yield _take(first, it, size)


def _take(first: object, it: Iterator, size: int) -> Iterator:
    yield first
    for _, item in zip(range(size - 1), it, strict=False):
        yield item


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
