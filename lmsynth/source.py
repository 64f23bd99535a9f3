"""Open an LMSYS-Chat-1M-schema source and stream its conversations, each with the file and line it came from.

A source is one of: the bundled sample (`None`); a local `.jsonl`, `.jsonl.gz` or `.parquet` file, or a
folder of them (read recursively in path order); or a hub dataset id such as `lmsys/lmsys-chat-1m`, streamed
with the user's token and never held in memory. Every row is validated into `SourceConversation`, and every
problem becomes one line naming the file, the line (or row) and the field. A `conversation_id` seen twice is
an error too: the key derivation and the merge-back during recovery both rely on ids being unique.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from pydantic import SecretStr, ValidationError

from lmsynth import constants
from lmsynth.config import dotted
from lmsynth.errors import InputRecordError, InputRowError, SourceError
from lmsynth.io import parse_line, sha256_file
from lmsynth.records import SourceConversation


logger = logging.getLogger(__name__)

# Local files a source folder may hold, by suffix.
SOURCE_SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".parquet")

# `owner/name` of a hub dataset; only tried when SRC is not an existing path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Domain prefix of `Source.fingerprint()`. It hashes file names, sizes and content hashes, never the canonical
# (id, first message) stream of the key derivation, so publishing it reveals nothing about the key.
FINGERPRINT_DOMAIN = b"lmsynth-source-fingerprint-v1\n"


class LocatedConversation(NamedTuple):
    """A source row with where it came from, so later errors can point at it."""

    conversation: SourceConversation
    path: str
    line: int


class Source:
    """An opened source. Iterate it for `SourceConversation`s; `rows()` adds file and line.

    Build it with `open_source`; iteration can be repeated (each pass re-reads the files or the stream).
    """

    def __init__(
        self, name: str, *, files: tuple[Path, ...] = (), hub_id: str | None = None, token: SecretStr | None = None
    ) -> None:
        """Store what `open_source` resolved; nothing is opened yet."""
        self.name = name
        self.files = files
        self.hub_id = hub_id
        self._token = token

    def __repr__(self) -> str:
        """Name only: the token stays out of reprs and logs."""
        return f"Source({self.name!r})"

    def __iter__(self) -> Iterator[SourceConversation]:
        """The validated conversations, in source order (see `rows`)."""
        for located in self.rows():
            yield located.conversation

    @property
    def is_hub(self) -> bool:
        """Whether rows stream from a hub dataset."""
        return self.hub_id is not None

    def rows(self) -> Iterator[LocatedConversation]:
        """Every row in source order, validated, with duplicate ids refused.

        Raises:
            InputRecordError: a line is not JSON, misses a field, or repeats a `conversation_id`.
            InputRowError: the same, for a Parquet row or a hub dataset row.
            SourceError: a file cannot be read, or the hub dataset cannot be opened.
        """
        # 16-byte digests instead of the ids: about half the memory for 1M LMSYS ids, and a collision
        # (a false "duplicate") is beyond any realistic chance at 128 bits.
        seen: set[bytes] = set()
        for located in self._raw_rows():
            digest = hashlib.blake2b(located.conversation.conversation_id.encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                raise self._duplicate_error(located)
            seen.add(digest)
            yield located

    def estimated_rows(self) -> int | None:
        """Row count for a progress bar when it is cheap to know (local files), else None."""
        if self.is_hub:
            return None
        total = 0
        for path in self.files:
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                try:
                    total += pq.ParquetFile(path).metadata.num_rows
                except Exception:  # noqa: BLE001 — only a hint; reading reports the real error
                    return None
            elif path.suffix == ".jsonl":
                with open(path, "rb") as f:
                    total += sum(chunk.count(b"\n") for chunk in iter(lambda f=f: f.read(1 << 20), b""))
            else:
                return None
        return total

    def fingerprint(self) -> str:
        """A content fingerprint for MANIFEST.json: sha256 over names, sizes and per-file sha256, domain-prefixed.

        For a hub dataset it hashes the id and the dataset's current commit on the hub.

        Raises:
            SourceError: a file cannot be read, or the hub cannot be asked for the dataset's revision.
        """
        h = hashlib.sha256(FINGERPRINT_DOMAIN)
        if self.hub_id is not None:
            h.update(b"hub\0" + self.hub_id.encode() + b"\0" + self._hub_revision().encode() + b"\n")
            return h.hexdigest()
        root = self.files[0].parent if len(self.files) == 1 else Path(self.name)
        for path in self.files:
            rel = path.name if len(self.files) == 1 else path.relative_to(root).as_posix()
            try:
                size, digest = path.stat().st_size, sha256_file(path)
            except OSError as e:
                raise SourceError(str(path), f"cannot read: {e.strerror or e}") from e
            h.update(f"{rel}\0{size}\0{digest}\n".encode())
        return h.hexdigest()

    # Private helpers

    def _raw_rows(self) -> Iterator[LocatedConversation]:
        """Every row; a file (or hub dataset) with no row at all is refused: it is a failed copy, not data."""
        if self.hub_id is not None:
            yield from _nonempty(_hub_rows(self.hub_id, self._token), self.hub_id)
            return
        for path in self.files:
            yield from _nonempty(_parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path), str(path))

    def _duplicate_error(self, dup: LocatedConversation) -> InputRecordError:
        cid = dup.conversation.conversation_id
        first = None
        if not self.is_hub:  # local files are cheap to re-read on this error path
            first = next((r for r in self._raw_rows() if r.conversation.conversation_id == cid), None)
        where = f"; first seen at {first.path}: {_unit(first.path)} {first.line}" if first else ""
        cls = InputRowError if self.is_hub or _unit(dup.path) == "row" else InputRecordError
        return cls(dup.path, dup.line, "conversation_id", f"duplicate conversation_id {cid!r}{where}")

    def _hub_revision(self) -> str:
        from huggingface_hub import HfApi

        try:
            info = HfApi().dataset_info(self.hub_id, token=_plain(self._token))
        except Exception as e:  # noqa: BLE001 — any client failure is one line naming the dataset
            raise SourceError(self.hub_id or "", _hub_message("cannot read dataset info", e, self._token)) from e
        return info.sha or ""


def open_source(src: str | None, *, token: SecretStr | None = None) -> Source:
    """Open a source for streaming.

    Args:
        src: None for the bundled sample; a `.jsonl`, `.jsonl.gz` or `.parquet` file; a folder of them
            (recursive, path order, hidden entries skipped); or a hub dataset id (`owner/name`) that is not
            an existing path.
        token: Hub token for gated datasets (None: the client's own login or `HF_TOKEN`).

    Returns:
        The opened source; nothing is read until it is iterated.

    Raises:
        SourceError: the path does not exist, has an unknown suffix, or is a folder with no source files.
    """
    if src is None:
        return Source(str(constants.SAMPLE_SOURCE), files=(constants.SAMPLE_SOURCE,))
    if not src.strip():
        raise SourceError(repr(src), "`source` is empty; give a file, a folder or a hub dataset id")
    path = Path(src).expanduser()
    if path.is_dir():
        files = tuple(
            sorted(
                (p for p in path.rglob("*") if p.is_file() and _is_source_file(p) and not _hidden(p, path)),
                key=lambda p: p.relative_to(path).as_posix(),
            )
        )
        if not files:
            raise SourceError(src, f"folder holds no source files ({', '.join(SOURCE_SUFFIXES)})")
        return Source(src, files=files)
    if path.exists():
        if not _is_source_file(path):
            raise SourceError(src, f"unknown source format; expected one of {', '.join(SOURCE_SUFFIXES)}")
        return Source(src, files=(path,))
    if HUB_ID.match(src) and not any(src.endswith(s) for s in (*SOURCE_SUFFIXES, ".json", ".gz")):
        return Source(src, hub_id=src, token=token)
    raise SourceError(src, "no such file or folder (and not a hub dataset id like `lmsys/lmsys-chat-1m`)")


# Private helpers


def _nonempty(rows: Iterator[LocatedConversation], where: str) -> Iterator[LocatedConversation]:
    n = 0
    for n, row in enumerate(rows, start=1):  # noqa: B007 — n is checked after the loop
        yield row
    if n == 0:
        raise SourceError(where, "holds no conversations (an empty file is a failed copy, not a source)")


def _is_source_file(path: Path) -> bool:
    return any(path.name.endswith(s) for s in SOURCE_SUFFIXES)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _unit(path: str) -> str:
    return "row" if path.endswith(".parquet") else "line"


def _jsonl_rows(path: Path) -> Iterator[LocatedConversation]:
    where = str(path)
    try:
        f = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise SourceError(where, f"cannot read: {e.strerror or e}") from e
    with f:
        lineno = 0
        try:
            for lineno, raw in enumerate(f, start=1):  # noqa: B007 — lineno is reported after the loop on error
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputRecordError(where, lineno, None, f"not valid UTF-8 ({e.reason})") from e
                yield LocatedConversation(
                    parse_line(text, SourceConversation, path=where, lineno=lineno), where, lineno
                )
        except (OSError, EOFError, zlib.error) as e:
            raise SourceError(where, f"cannot read after line {lineno}: {e}") from e


def _parquet_rows(path: Path) -> Iterator[LocatedConversation]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = str(path)
    row = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=1024):
            for data in batch.to_pylist():
                row += 1
                yield LocatedConversation(_validate(data, where, row), where, row)
    except (OSError, pa.ArrowException) as e:
        raise SourceError(where, f"cannot read Parquet after row {row}: {' '.join(str(e).split())}") from e


def _hub_rows(hub_id: str, token: SecretStr | None) -> Iterator[LocatedConversation]:
    import datasets

    try:
        stream = datasets.load_dataset(hub_id, split="train", streaming=True, token=_plain(token))
        iterator = iter(stream)
    except Exception as e:  # noqa: BLE001 — gated, missing, offline: one line naming the dataset
        raise SourceError(hub_id, _hub_message("cannot open hub dataset", e, token)) from e
    row = 0
    while True:
        try:
            data = next(iterator)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 — a broken stream mid-way is a source error, not a crash
            raise SourceError(hub_id, _hub_message(f"stream failed after row {row}", e, token)) from e
        row += 1
        yield LocatedConversation(_validate(data, hub_id, row), hub_id, row)


def _validate(data: dict, where: str, row: int) -> SourceConversation:
    try:
        return SourceConversation.model_validate(data, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        raise InputRowError(where, row, dotted(first["loc"]) or None, first["msg"]) from e


def _plain(token: SecretStr | None) -> str | None:
    return token.get_secret_value() if token is not None else None


def _hub_message(what: str, err: Exception, token: SecretStr | None) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    secret = _plain(token)
    if secret:
        text = text.replace(secret, "***")
    return f"{what}: {type(err).__name__}: {text[:300]}"
