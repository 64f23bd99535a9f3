"""`recover` for the original release: decrypt the JA instructions, join them with the source and a generation.

The authors' own recipe merges three files by `conversation_id`: the JA instructions into the user's
LMSYS-Chat-1M rows, then a generation's public file into that. This does the same in bounded memory: the
encrypted file streams through gpg (no plaintext file), its rows and the source rows it needs go into an
on-disk SQLite store in a private scratch folder (removed on exit, and by the next command after a kill), and
the public file, GBs for a generation, streams line by line into the output shards. Everything is decrypted
before a byte is written, so a wrong key writes nothing. The output folder is the one lmsynth's own
releases recover to (`recover_report.json` + `<subset>/recovered-*.jsonl`), readable by owner only.
"""

from __future__ import annotations

import gzip
import json
import logging
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pydantic import SecretStr, ValidationError

from lmsynth import constants
from lmsynth.config import dotted
from lmsynth.errors import InputRecordError, PassphraseError, SourceError
from lmsynth.faults import kill_point
from lmsynth.io import atomic_dir, parse_line, write_json
from lmsynth.original import layout
from lmsynth.original.models import (
    FAILED_SCORE,
    FLAG_FIELDS,
    OriginalInstruction,
    OriginalRecoveredRecord,
    OriginalSynthRecord,
    one_conversation_list,
)
from lmsynth.outdir import check_out, mark, source_input
from lmsynth.progress import track
from lmsynth.records import Message
from lmsynth.recover import REPORT_FILE, RecoverReport, RecoverResult, SubsetLicense, SubsetRecovery, write_shards
from lmsynth.release.inputs import RunInput
from lmsynth.scratch import scratch_dir


logger = logging.getLogger(__name__)

LAYOUT = "original"
# The response licenses of the generations (SPEC §4; the same names and links as lmsynth's own manifests).
LICENSES = {
    "llama3.1": SubsetLicense(
        generator="meta-llama/Llama-3.1-405B-Instruct",
        name="Llama 3.1 Community License Agreement",
        link="https://www.llama.com/llama3_1/license/",
    ),
    "gemma2": SubsetLicense(
        generator="google/gemma-2-27b-it", name="Gemma Terms of Use", link="https://ai.google.dev/gemma/terms"
    ),
    "gemma3": SubsetLicense(
        generator="google/gemma-3-27b-it", name="Gemma Terms of Use", link="https://ai.google.dev/gemma/terms"
    ),
}
NO_KEY = (
    "the original release's key is computed by its authors' script from LMSYS-Chat-1M, which lmsynth cannot "
    f"do: pass the key you computed with --passphrase-file FILE or ${constants.PASSPHRASE_ENV}"
)
_BATCH = 2_000  # source rows per SQLite lookup


def original_passphrase(passphrase_file: Path | None) -> SecretStr:
    """The key of the original release: from the file or the environment, never derived (lmsynth cannot).

    Raises:
        PassphraseError: neither is given, or the file cannot be read or is empty.
    """
    from lmsynth.passphrase import read_passphrase_file

    if passphrase_file is not None:
        return SecretStr(read_passphrase_file(passphrase_file))
    env = constants.passphrase_from_env()
    if env is not None:
        return SecretStr(env)
    raise PassphraseError(f"no passphrase: {NO_KEY}")


def recover_original(
    root: RunInput,
    *,
    subsets: list[str] | None,
    source: str | None,
    out_dir: Path | str,
    passphrase: SecretStr,
    include_unsafe: bool = False,
) -> RecoverResult:
    """Recover complete records of one or more generations of the original release.

    Args:
        root: the release (`layout.detect`): a local folder or a pinned Hub repo.
        subsets: generations to recover (`llama3.1`, `gemma2`, `gemma3`); None: the one the release holds.
        source: LMSYS-Chat-1M (file, folder or hub id); None is the bundled sample.
        out_dir: the folder to write; replaced only when recovery succeeds.
        passphrase: the key the user computed.
        include_unsafe: also decrypt the `+unsafe` set and write its moderation-flagged instructions.

    Returns:
        The output folder and the report written to `recover_report.json`.

    Raises:
        SourceError: a subset's public file or the `+unsafe` file is missing, or a file cannot be read.
        PassphraseError: the key does not decrypt a JA file (names it; nothing is written).
        InputRecordError: a line is not this layout, misses a required field, or has an id with no match.
    """
    names = _subsets(root, subsets)
    files = {name: layout.subset_file(root, name) for name in names}
    shown = Path(out_dir)
    release = root.path if root.fs is None else None
    out_dir = check_out(out_dir, kind="recovered", inputs=[release, source_input(source)])
    with scratch_dir("recover-original") as work:
        store = _Store(work / "store.sqlite")
        try:
            gated = _load_instructions(store, root, passphrase=passphrase, include_unsafe=include_unsafe)
            source_rows = _load_source(store, source)
            with atomic_dir(out_dir, private=True) as tmp:  # gated instructions
                mark(tmp, "recovered")
                results = {
                    name: _merge(store, files[name], name, out=tmp, gated=gated, source=source or "the bundled sample")
                    for name in names
                }
                report = RecoverReport(
                    target=root.shown or root.url,
                    revision=max(layout.VERSIONS[n] for n in names),
                    commit=root.commit,
                    layout=LAYOUT,
                    include_unsafe=include_unsafe,
                    source_rows=source_rows,
                    subsets=results,
                )
                write_json(tmp / REPORT_FILE, report.model_dump(mode="json"))
        finally:
            store.close()
    return RecoverResult(out_dir=shown, report=report)


# Private helpers


class _Store:
    """JA instructions and the source rows they need, keyed by conversation_id, on disk."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16384; PRAGMA temp_store=FILE;"
            "CREATE TABLE ja (id TEXT PRIMARY KEY, json TEXT, file TEXT, line INTEGER, unsafe INTEGER,"
            " used INTEGER DEFAULT 0) WITHOUT ROWID;"
            "CREATE TABLE src (id TEXT PRIMARY KEY, json TEXT) WITHOUT ROWID;"
        )

    def close(self) -> None:
        self.db.close()


def _subsets(root: RunInput, subsets: list[str] | None) -> list[str]:
    """The generations to recover, each with its public file present; one line naming what is missing."""
    if subsets:
        names = list(dict.fromkeys(layout.canonical_subset(s) for s in subsets))
        for name in names:
            if layout.subset_file(root, name) is None:
                expected = " or ".join(f"{layout.GATED_DIR}/{f}" for f in layout.SUBSET_FILES[name])
                raise SourceError(str(root), f"no public file of subset {name}: expected {expected}")
        return names
    present = layout.present_subsets(root)
    if len(present) == 1:
        return present
    if not present:
        raise SourceError(str(root), f"no public file of any generation ({', '.join(layout.SUBSET_FILES)})")
    raise SourceError(str(root), f"holds several generations ({', '.join(present)}): choose with --subset")


def _lines(stream: IO[bytes], shown: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a gunzipping JSONL stream; one that is not gzip or UTF-8 is one line naming it."""
    lineno = 0
    try:
        for lineno, raw in enumerate(stream, start=1):  # noqa: B007 — reported on error
            if raw.strip():
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputRecordError(shown, lineno, None, f"not valid UTF-8 ({e.reason})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        what = "not gzipped JSONL" if lineno == 0 else f"cut short or damaged after line {lineno}"
        raise InputRecordError(shown, lineno + 1, None, f"{what} ({why})") from None
    if lineno == 0:
        raise InputRecordError(shown, None, None, "holds no records (an empty file is a failed copy, not this layout)")


def _load_instructions(store: _Store, root: RunInput, *, passphrase: SecretStr, include_unsafe: bool) -> int:
    """Decrypt the JA file(s) straight into the store; an id twice in one file is refused."""
    from lmsynth.crypto import decrypt_stream

    files = [(layout.GATED_DEFAULT, 0)]
    if include_unsafe:
        if not root.child(layout.GATED_UNSAFE).is_file():
            raise SourceError(str(root), f"no {layout.GATED_UNSAFE} (the `+unsafe` set came with Gemma-3)")
        files.append((layout.GATED_UNSAFE, 1))
    n = 0
    for rel, unsafe in files:
        inp = root.child(rel)
        with inp.open() as raw, decrypt_stream(raw, passphrase=passphrase, name=rel) as plain:
            lines = _lines(gzip.GzipFile(fileobj=plain, mode="rb"), rel)
            for lineno, text in track(lines, f"Decrypting {Path(rel).name}"):
                rec = parse_line(text, OriginalInstruction, path=rel, lineno=lineno)
                kill_point("original.decrypting")  # gpg running, JA rows in the scratch store
                row = (rec.conversation_id, rec.model_dump_json(), rel, lineno, unsafe)
                try:
                    store.db.execute("INSERT INTO ja (id, json, file, line, unsafe) VALUES (?, ?, ?, ?, ?)", row)
                    n += 1
                except sqlite3.IntegrityError:
                    if not unsafe:  # the `+unsafe` set repeats the default one: only its new ids count
                        first = store.db.execute("SELECT line FROM ja WHERE id = ?", (rec.conversation_id,)).fetchone()
                        why = f"duplicate {rec.conversation_id!r} (first at line {first[0]})"
                        raise InputRecordError(rel, lineno, "conversation_id", why) from None
    store.db.commit()
    return n


def _load_source(store: _Store, source: str | None) -> int:
    """Keep the source rows whose id has a JA instruction (the rest of LMSYS-Chat-1M is never needed)."""
    from lmsynth.source import open_source

    n = 0
    batch: list = []

    def flush() -> None:
        ids = [c.conversation_id for c in batch]
        marks = ",".join("?" * len(ids))
        wanted = {r[0] for r in store.db.execute(f"SELECT id FROM ja WHERE id IN ({marks})", ids)}  # noqa: S608
        store.db.executemany(
            "INSERT INTO src VALUES (?, ?)",
            [(c.conversation_id, c.model_dump_json()) for c in batch if c.conversation_id in wanted],
        )
        batch.clear()

    for conv in track(open_source(source), "Reading the source"):
        n += 1
        batch.append(conv)
        if len(batch) >= _BATCH // 4:  # under SQLite's 999 host parameters per statement
            flush()
    if batch:
        flush()
    store.db.commit()
    return n


def _merge(store: _Store, inp: RunInput | None, subset: str, *, out: Path, gated: int, source: str) -> SubsetRecovery:
    """Join the public file of `subset` with the store; write `out/<subset>/recovered-*.jsonl`."""
    assert inp is not None
    shown = inp.shown or inp.url
    db = store.db
    db.execute("UPDATE ja SET used = 0")
    counts = {"public_rows": 0, "merged": 0, "unsafe_included": 0, "failed_scores": 0}

    def records() -> Iterator[OriginalRecoveredRecord]:
        with inp.open() as stream:  # gunzipped as it arrives
            for lineno, text in track(_lines(stream, shown), f"Merging {subset}"):
                rec = parse_line(text, OriginalSynthRecord, path=shown, lineno=lineno)
                counts["public_rows"] += 1
                hit = db.execute("SELECT json, used FROM ja WHERE id = ?", (rec.conversation_id,)).fetchone()
                if hit is None:
                    why = f"{rec.conversation_id!r} has no JA instruction in {layout.GATED_DEFAULT}"
                    raise InputRecordError(shown, lineno, "conversation_id", why)
                if hit[1]:
                    raise InputRecordError(shown, lineno, "conversation_id", f"duplicate {rec.conversation_id!r}")
                db.execute("UPDATE ja SET used = 1 WHERE id = ?", (rec.conversation_id,))
                kill_point("original.merging")  # output half-written in its temporary folder
                yield _complete(db, rec, json.loads(hit[0]), where=(shown, lineno), source=source, counts=counts)
        # The moderation-flagged instructions of the `+unsafe` set have no responses: written with their instruction.
        rows = db.execute("SELECT json, file, line FROM ja WHERE unsafe = 1 AND used = 0 ORDER BY id").fetchall()
        for ja_json, file, line in rows:
            counts["unsafe_included"] += 1
            ja = json.loads(ja_json)
            bare = OriginalSynthRecord(conversation_id=ja["conversation_id"])
            yield _complete(db, bare, ja, where=(file, line), source=source, counts=counts, partial=True)

    files = write_shards(records(), out / subset)
    return SubsetRecovery(
        public_rows=counts["public_rows"],
        gated_instructions=gated,
        written=counts["merged"],
        merged=counts["merged"],
        missing_in_source=0,
        missing_instruction=0,
        unsafe_included=counts["unsafe_included"],
        failed_scores=counts["failed_scores"],
        files=files,
        license=LICENSES[subset],
    )


def _complete(
    db: sqlite3.Connection,
    rec: OriginalSynthRecord,
    ja: dict,
    *,
    where: tuple[str, int],
    source: str,
    counts: dict[str, int],
    partial: bool = False,
) -> OriginalRecoveredRecord:
    """The source row ← JA instruction ← public fields, as the authors' merge layers them; -1 scores become null."""
    path, lineno = where
    src = db.execute("SELECT json FROM src WHERE id = ?", (rec.conversation_id,)).fetchone()
    if src is None:
        raise InputRecordError(path, lineno, "conversation_id", f"{rec.conversation_id!r} is not in --source {source}")
    public = rec.model_dump(mode="json", exclude_unset=True)
    if not partial:
        missing = [f for f in FLAG_FIELDS if f not in public and f not in ja]
        if missing:
            raise InputRecordError(path, lineno, missing[0], "missing (neither here nor in the JA instructions)")
    merged: dict = json.loads(src[0]) | ja | public
    for ann in merged.get("synthesized_response_scoring_annotations", []):
        if ann["preference_score"] == FAILED_SCORE:
            ann["preference_score"] = None
            counts["failed_scores"] += 1
    instruction = ja["translated_conversation"][0]["content"]
    if merged.get("synthesized_multiturn_conversation") is not None:
        merged["synthesized_multiturn_conversation"] = [
            _with_instruction(conv, instruction)
            for conv in one_conversation_list(merged["synthesized_multiturn_conversation"])
        ]
    try:
        out = OriginalRecoveredRecord.model_validate(merged, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        raise InputRecordError(path, lineno, dotted(first["loc"]) or None, first["msg"]) from None
    counts["merged"] += 1
    return out


def _with_instruction(conv: list[dict], instruction: str) -> list[dict]:
    """The JA instruction as the conversation's first user turn (the public file may leave it blank or out)."""
    if conv and conv[0].get("role") == "user":
        return conv if conv[0].get("content") else [{"role": "user", "content": instruction}, *conv[1:]]
    return [Message(role="user", content=instruction).model_dump(), *conv]
