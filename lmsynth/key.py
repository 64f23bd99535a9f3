r"""The decryption key of the gated files, computed from the gated source itself (`lmsynth-key-v1`).

Only people who accepted the LMSYS-Chat-1M license hold the source, so only they can recompute the key.
The scheme is fixed so that anyone can reimplement it in a few lines:

1. Take ALL rows of the source (every language, flagged or not).
2. Sort them by `conversation_id` in plain string order: Python `str` order on the decoded id, which is
   Unicode code point order (and, for UTF-8, the same as byte order; for LMSYS's 32-hex ids, plain ASCII order).
3. For each row take `conversation_id` and the `content` of its FIRST message (index 0, whatever its role).
4. Feed `id + b"\x1f" + content + b"\x1e"` (both UTF-8) for every row, in that order, into one SHA-256.
5. The key is the lowercase hex digest.

(Lone surrogates, which are not valid Unicode but can appear in JSON escapes, are encoded as their
three-byte UTF-8 form, Python's `surrogatepass`.) Memory stays bounded for 1M rows: pairs are sorted in
chunks, spilled to temporary files and merged with `heapq.merge`.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import SecretStr

from lmsynth.progress import track
from lmsynth.scratch import scratch_dir
from lmsynth.source import Source, open_source


KEY_SCHEME = "lmsynth-key-v1"
ID_SEPARATOR = b"\x1f"  # ASCII unit separator, between id and content
ROW_TERMINATOR = b"\x1e"  # ASCII record separator, after each row

# Pairs sorted in memory before spilling to a temporary file: ~100 MB of typical LMSYS first turns.
DEFAULT_CHUNK_ROWS = 200_000
# Pairs per pickled block inside a spill file (bounds the read-back buffer of each merged run).
_BLOCK = 4096


def derive_key(
    source: str | Source | None,
    *,
    token: SecretStr | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    tmp_dir: Path | None = None,
) -> SecretStr:
    """Compute the `lmsynth-key-v1` passphrase of a source.

    Args:
        source: a source spec for `open_source` (None: the bundled sample) or an opened `Source`.
        token: hub token when `source` is a gated hub dataset.
        chunk_rows: pairs held in memory before a sorted chunk is spilled to disk.
        tmp_dir: where spill files go (default: a scratch folder); removed afterwards.

    Returns:
        The lowercase hex SHA-256, wrapped so it never shows in reprs or logs.

    Raises:
        InputRecordError: a source row is malformed or repeats a `conversation_id`.
        SourceError: the source cannot be read.
    """
    src = source if isinstance(source, Source) else open_source(source, token=token)
    rows = track(src, "Reading source for the key", total=src.estimated_rows())
    pairs = ((c.conversation_id, c.conversation[0].content) for c in rows)
    return SecretStr(key_digest(pairs, chunk_rows=chunk_rows, tmp_dir=tmp_dir))


def key_digest(
    pairs: Iterable[tuple[str, str]], *, chunk_rows: int = DEFAULT_CHUNK_ROWS, tmp_dir: Path | None = None
) -> str:
    """The `lmsynth-key-v1` digest of (conversation_id, first message content) pairs given in any order.

    Args:
        pairs: one (id, content) pair per source row.
        chunk_rows: pairs sorted in memory at a time (at least 1); more pairs are merged from spill files.
        tmp_dir: folder for spill files.

    Returns:
        The lowercase hex SHA-256 digest.
    """
    h = hashlib.sha256()
    for cid, content in sorted_pairs(pairs, chunk_rows=chunk_rows, tmp_dir=tmp_dir):
        h.update(_encode(cid) + ID_SEPARATOR + _encode(content) + ROW_TERMINATOR)
    return h.hexdigest()


def sorted_pairs(
    pairs: Iterable[tuple[str, str]], *, chunk_rows: int = DEFAULT_CHUNK_ROWS, tmp_dir: Path | None = None
) -> Iterator[tuple[str, str]]:
    """Yield `pairs` sorted by id (ties by content), holding at most `chunk_rows` pairs in memory at a time.

    A source that fits in one chunk is sorted in memory; a larger one is an external merge sort.
    """
    chunk_rows = max(1, chunk_rows)
    it = iter(pairs)
    first = sorted(itertools.islice(it, chunk_rows))
    if len(first) < chunk_rows:
        yield from first
        return
    # The spills hold source text: a scratch folder, which the next command removes if this one is killed.
    with contextlib.ExitStack() as stack:
        tmp = tempfile.mkdtemp(prefix="lmsynth-key-", dir=tmp_dir) if tmp_dir else None
        if tmp is not None:
            stack.callback(shutil.rmtree, tmp, True)
        else:
            tmp = stack.enter_context(scratch_dir("key"))
        runs = [_spill(first, Path(tmp) / "run-00000.pkl")]
        del first
        while chunk := sorted(itertools.islice(it, chunk_rows)):
            runs.append(_spill(chunk, Path(tmp) / f"run-{len(runs):05d}.pkl"))
            del chunk
        yield from heapq.merge(*(_read_run(p) for p in runs))


# Private helpers


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _spill(chunk: list[tuple[str, str]], path: Path) -> Path:
    with open(path, "wb") as f:
        for start in range(0, len(chunk), _BLOCK):
            pickle.dump(chunk[start : start + _BLOCK], f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _read_run(path: Path) -> Iterator[tuple[str, str]]:
    # Our own temporary file, written just above: unpickling it is safe.
    with open(path, "rb") as f:
        while True:
            try:
                block = pickle.load(f)
            except EOFError:
                return
            yield from block
