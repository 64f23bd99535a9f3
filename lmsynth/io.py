"""Atomic file writing and validated JSONL reading, shared by every stage.

Writers go to a temporary sibling and rename on success, so a crash or a bad record never leaves a
half-written file where a finished one is expected.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TypeVar

from pydantic import BaseModel, ValidationError

from lmsynth import scratch
from lmsynth.config import dotted
from lmsynth.errors import InputRecordError


M = TypeVar("M", bound=BaseModel)

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, tmp_dir: Path | str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path` (or in `tmp_dir`, same file system); rename it over `path` on success.

    A killed process leaves its temporary file behind: give a `tmp_dir` that the next command cleans when
    other processes may write into `path`'s folder at the same time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=tmp_dir or path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp's 0600 would make finished files private
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    scratch.register_pending(tmp)  # a kill leaves it: the next command removes it
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_text(path: Path, mode: str = "rt") -> IO[str]:
    """Open plain or `.gz` text as UTF-8."""
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def dump_json_line(model: BaseModel) -> str:
    """One canonical JSON line (no trailing newline) for a record model."""
    return model.model_dump_json(exclude_none=False)


def write_jsonl(path: Path | str, records: Iterable[BaseModel]) -> int:
    """Write records atomically as JSON Lines (gzip when the name ends in `.gz`); return the count."""
    path = Path(path)
    n = 0
    with atomic_path(path) as tmp:
        if path.suffix == ".gz":
            # mtime=0 and no file name keep the bytes deterministic.
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
                for rec in records:
                    gz.write((dump_json_line(rec) + "\n").encode("utf-8"))
                    n += 1
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(dump_json_line(rec) + "\n")
                    n += 1
    return n


def read_jsonl(path: Path | str, model: type[M]) -> Iterator[M]:
    """Stream `model` records from a JSON Lines file (plain or `.gz`), skipping blank lines.

    Raises:
        InputRecordError: a line is not JSON or does not validate; names the file, line and field.
    """
    path = Path(path)
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            yield parse_line(line, model, path=path, lineno=lineno)


def parse_line(line: str, model: type[M], *, path: Path | str, lineno: int | None) -> M:
    """Validate one JSON line strictly (no type coercion), turning any failure into a one-line `InputRecordError`."""
    try:
        return model.model_validate_json(line, strict=True)  # `"yes"`, `1` are not booleans; `"3"` is no int
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            raise InputRecordError(path, lineno, None, f"not valid JSON ({first['msg']})") from e
        raise InputRecordError(path, lineno, dotted(first["loc"]) or None, first["msg"]) from e


def write_text(path: Path | str, text: str) -> None:
    """Write UTF-8 text atomically: readers see the whole file or none of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: object) -> None:
    """Write canonical, sorted, indented JSON atomically (deterministic bytes)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def sha256_file(path: Path | str, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


FULL_BYTES = 64 * 1024  # less free space than this where a write just failed: the disk is full


def no_space_left(path: Path | str) -> bool:
    """Whether the file system holding `path` (or its nearest existing parent) is full.

    For tools that fail on a full disk without saying so (git's checkouts, gpg's "need symmetric
    passphrase" when its home cannot be written): their failure is then reported as a full disk.
    """
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_BYTES
