"""Atomic file writing and validated JSONL reading, shared by every stage.

Writers go to a temporary sibling and rename on success, so a crash or a bad record never leaves a
half-written file where a finished one is expected. Writers of gated text (LMSYS-Chat-1M instructions,
their translations, recovered or exported gated fields) pass `private=True`: their files are 0600 in 0700
folders whatever the umask (`make_private`, `private_dir`); other files follow the umask.
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

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def private_dir(path: Path | str) -> Path:
    """`path` as a folder only its owner can enter (0700), created with any missing parents (0700 too)."""
    path = Path(path)
    missing, up = [], path
    while not up.exists() and up != up.parent:
        missing.append(up)
        up = up.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)  # explicit: an existing folder keeps no wider mode
    return path


def make_private(path: Path | str) -> None:
    """Make `path` and everything under it its owner's only: folders 0700, files 0600 (links left alone)."""
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, PRIVATE_FILE_MODE)
        return
    os.chmod(path, PRIVATE_DIR_MODE)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), PRIVATE_DIR_MODE)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), PRIVATE_FILE_MODE)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, tmp_dir: Path | str | None = None, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path` (or in `tmp_dir`, same file system); rename it over `path` on success.

    A killed process leaves its temporary file behind: give a `tmp_dir` that the next command cleans when
    other processes may write into `path`'s folder at the same time. `private`: the file is 0600 and its
    folder 0700 (gated text); otherwise the file follows the umask.
    """
    path = Path(path)
    if private:
        private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    with _names(tmp_dir or path.parent):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=tmp_dir or path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes it 0600 whatever the umask; a file that is not private gets the umask's mode.
    os.chmod(tmp_path, PRIVATE_FILE_MODE if private else 0o666 & ~_UMASK)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; it replaces `path` only if the block succeeds.

    `private` (gated text): the folder stays 0700 while it is written, and everything in it is made 0600
    in 0700 folders (`make_private`) before it takes `path`'s place; otherwise the folder follows the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _names(path.parent):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    scratch.register_pending(tmp)  # a kill leaves it: the next command removes it
    os.chmod(tmp, PRIVATE_DIR_MODE if private else 0o777 & ~_UMASK)
    try:
        yield tmp
        if private:
            make_private(tmp)
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


@contextlib.contextmanager
def _names(folder: Path | str) -> Iterator[None]:
    """An OS error creating a temporary entry names `folder` (the one the user gave), not a random name in it."""
    try:
        yield
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(folder)) from None


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


def write_text(path: Path | str, text: str, *, private: bool = False) -> None:
    """Write UTF-8 text atomically: readers see the whole file or none of it (`private`: 0600 in 0700)."""
    with atomic_path(path, private=private) as tmp:
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
