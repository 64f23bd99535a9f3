"""The leak guard: no gated instruction text may appear in any non-encrypted file of a release.

Before anything is written to a target, every public file of the built tree is scanned for every gated
string (the JA translations, and the EN originals when the prepare output is known): the string values of
the Parquet shards (nested ones included) and the raw bytes of every other file and of the Parquet files
themselves (cards, YAML, JSON, figure metadata, Parquet footers).

The search is a sampled hash over UTF-8 bytes, vectorised with numpy. Each gated string of at least
`MIN_BYTES` bytes is indexed by the hashes of its last `STRIDE` windows of `WINDOW` (16) bytes (the ends
of instructions vary more than their beginnings). Any occurrence in a text then has one of those windows
starting at a text position that is a multiple of `STRIDE` (8), so the text is hashed only there: a
window is two aligned 64-bit words, and hashing is two multiplications per 8 bytes of text. Every hash
hit is confirmed by comparing the bytes, so a collision never refuses a release.

Strings shorter than `MIN_BYTES` (24 bytes: about 8 Japanese or 24 Latin characters) are not searched:
very short instructions ("hi", "こんにちは") occur everywhere in ordinary text.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

from lmsynth.errors import LeakError
from lmsynth.progress import track
from lmsynth.records import GATED_MIN_BYTES
from lmsynth.release.data_files import string_bytes
from lmsynth.tree import layout


WINDOW = 16
STRIDE = 8  # the word size: the sampled hash reads aligned 64-bit words
MIN_BYTES = GATED_MIN_BYTES  # ≥ WINDOW + STRIDE - 1 guarantees a sampled window inside any occurrence
assert MIN_BYTES >= WINDOW + STRIDE - 1
CHUNK = 4 * 2**20  # bytes of text hashed at once

_A = 0x9E3779B97F4A7C15
_B = 0xC2B2AE3D27D4EB4F
# A bitmap of flags over the keys' low bits: at least 16 MiB, 16 flags per key up to 32 MiB, so that about one
# window in 16 (one in 9 for the ~4M keys of a full v0.5 release) reaches the binary search.
_BITMAP_MIN_BITS, _BITMAP_MAX_BITS = 24, 25
_INDEX_SLICE = 1 << 18  # strings whose windows are hashed at once
SCAN_THREADS = 2  # Parquet row groups decoded and searched at once (pyarrow and numpy release the GIL)


class GatedIndex:
    """The gated strings, indexed by the hashes of their first `STRIDE` windows."""

    def __init__(self) -> None:
        # Compact, because it holds every gated string of a release: one byte blob plus typed arrays.
        self._blob = bytearray()
        self._starts = array("q", [0])
        self._seen: set[int] = set()
        self._sorted = None

    def add(self, text: str) -> None:
        """Index one gated string (ignored when shorter than `MIN_BYTES`)."""
        data = text.encode("utf-8")
        if len(data) < MIN_BYTES:
            return
        key = hash(data)  # the same instruction in several subsets is indexed once
        if key in self._seen:
            return
        self._seen.add(key)
        self._blob += data
        self._starts.append(len(self._blob))
        self._sorted = None

    def __len__(self) -> int:
        return len(self._starts) - 1

    def _string(self, sid: int) -> bytes:
        return bytes(self._blob[self._starts[sid] : self._starts[sid + 1]])

    def find(self, data: bytes | memoryview) -> bytes | None:
        """The first gated string found in `data`, or None."""
        import numpy as np

        if not len(self) or len(data) < MIN_BYTES:
            return None
        if isinstance(data, memoryview) and data.format != "B":
            data = data.cast("B")  # Arrow buffers are signed chars: compare bytes as unsigned
        keys, ids, offs, bitmap = self._index()
        for start in range(0, len(data), CHUNK):
            # Overlap chunks so that an occurrence across a chunk border is still seen.
            piece = data[start : start + CHUNK + MIN_BYTES]
            hashes = _sampled_hashes(piece)
            # A bitmap of the keys' low bits rejects almost every window before the binary search.
            maybe = np.flatnonzero(bitmap[hashes & np.uint64(len(bitmap) - 1)])
            if not len(maybe):
                continue
            pos = np.searchsorted(keys, hashes[maybe])
            pos[pos >= len(keys)] = 0
            for j in maybe[keys[pos] == hashes[maybe]]:
                k = int(np.searchsorted(keys, hashes[j]))
                while k < len(keys) and keys[k] == hashes[j]:
                    s = self._string(int(ids[k]))
                    begin = start + int(j) * STRIDE - int(offs[k])
                    if begin >= 0 and data[begin : begin + len(s)] == s:
                        return s
                    k += 1
        return None

    def prepare(self) -> None:
        """Build the search structures now (before `find` is called from several threads)."""
        if len(self):
            self._index()

    def _index(self):  # noqa: ANN202
        import numpy as np

        if self._sorted is None:
            # The last STRIDE windows of every string, hashed a slice of strings at a time (bounded temporaries);
            # keys are laid out string by string, so a key's place gives its string and its window.
            starts = np.frombuffer(self._starts, dtype=np.int64)
            n = len(starts) - 1
            shift = np.arange(-(WINDOW + STRIDE - 1), -WINDOW + 1, dtype=np.int64)
            keys = np.empty(n * STRIDE, dtype=np.uint64)
            blob = np.frombuffer(self._blob, dtype=np.uint8)  # a view: released below, before any `add`
            for i in range(0, n, _INDEX_SLICE):
                pos = (starts[i + 1 : i + 1 + _INDEX_SLICE, None] + shift[None, :]).ravel()
                keys[i * STRIDE : i * STRIDE + len(pos)] = _hash_at(blob, pos)
            del blob
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            ids = (order // STRIDE).astype(np.int32)
            window = (order % STRIDE).astype(np.int8)
            del order
            # A window's offset in its string: the string's length plus the window's (negative) shift.
            offs = np.diff(starts).astype(np.int32)[ids] + shift.astype(np.int32)[window]
            del window
            bits = min(max(_BITMAP_MIN_BITS, (16 * len(keys)).bit_length()), _BITMAP_MAX_BITS)
            bitmap = np.zeros(2**bits, dtype=bool)
            bitmap[keys & np.uint64(2**bits - 1)] = True
            self._sorted = (keys, ids, offs, bitmap)
        return self._sorted


def scan_tree(tree: Path, index: GatedIndex, *, narrow: Callable[[], bool] | None = None) -> int:
    """Scan every non-encrypted file under `tree`; return the number of files scanned.

    The string values of the Parquet shards, the bulk of the work, are decoded and searched one row group
    per task on `SCAN_THREADS` threads, or one at a time while `narrow()` is true (other work holds memory);
    a leak is reported for the first file in name order that has one.

    Raises:
        LeakError: a file contains a gated string (names the file, never the string).
    """
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not layout.is_encrypted(p.as_posix()))
    index.prepare()
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        for path in track(files, "Leak guard", unit="files"):
            rel = path.relative_to(tree).as_posix()
            # Parquet data pages are compressed: their values are scanned decoded below, the footer raw here.
            raw = _parquet_footer(path) if path.suffix == ".parquet" else path.read_bytes()
            if index.find(raw) is not None:
                raise LeakError(rel, "contains gated instruction text; refusing to publish")
            if path.suffix == ".parquet" and _parquet_leaks(pool, path, index, narrow):
                raise LeakError(rel, "a string value contains gated instruction text; refusing to publish")
    return len(files)


# Private helpers


def _hash_at(blob, pos):  # noqa: ANN001, ANN202
    """`_sampled_hashes`' hash of the 16-byte windows of `blob` starting at the (unaligned) positions `pos`."""
    import numpy as np

    def word(at):  # noqa: ANN001, ANN202
        w = np.zeros(len(at), dtype=np.uint64)
        for k in range(8):
            w |= blob[at + k].astype(np.uint64) << np.uint64(8 * k)
        return w

    w0, w1 = word(pos), word(pos + 8)
    with np.errstate(over="ignore"):
        return w0 * np.uint64(_A) + (w1 ^ (w1 >> np.uint64(29))) * np.uint64(_B)


def _sampled_hashes(data: bytes | memoryview):  # noqa: ANN202
    """Hashes of the `WINDOW`-byte windows of `data` starting at multiples of `STRIDE` (= 8 bytes)."""
    import numpy as np

    pad = (-len(data)) % 8
    words = np.frombuffer(bytes(data) + b"\0" * pad if pad else data, dtype="<u8")
    if len(words) < 2:
        return np.zeros(0, dtype=np.uint64)
    w0, w1 = words[:-1], words[1:]
    with np.errstate(over="ignore"):
        return w0 * np.uint64(_A) + (w1 ^ (w1 >> np.uint64(29))) * np.uint64(_B)


def _parquet_footer(path: Path) -> bytes:
    """The uncompressed footer of a Parquet file (schema, key-value metadata)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < 12:
            return b""
        f.seek(size - 8)
        length = int.from_bytes(f.read(4), "little")
        f.seek(max(0, size - 8 - length))
        return f.read(length)


def _parquet_leaks(pool: Executor, path: Path, index: GatedIndex, narrow: Callable[[], bool] | None) -> bool:
    """Whether a string value of a Parquet file holds a gated string: its row groups searched on `pool`."""
    import pyarrow.parquet as pq

    pending: deque[Future] = deque()
    try:
        for rg in range(pq.ParquetFile(path).num_row_groups):
            width = 1 if narrow is not None and narrow() else SCAN_THREADS
            while len(pending) >= width:
                if pending.popleft().result():
                    return True
            pending.append(pool.submit(_row_group_leaks, path, rg, index))
        return any(future.result() for future in pending)
    finally:
        for future in pending:
            future.cancel()


def _row_group_leaks(path: Path, rg: int, index: GatedIndex) -> bool:
    return any(index.find(blob) is not None for blob in _parquet_strings(path, rg))


def _parquet_strings(path: Path, rg: int) -> Iterable[bytes]:
    """The UTF-8 bytes of every string value of a Parquet row group, one blob per column."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def strings(arr: pa.Array) -> Iterable[pa.Array]:
        t = arr.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            yield arr
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            yield from strings(pc.list_flatten(arr))
        elif pa.types.is_struct(t):
            for i in range(t.num_fields):
                yield from strings(pc.struct_field(arr, [i]))

    pf = pq.ParquetFile(path)
    # One column at a time: memory stays at one column chunk per thread.
    for name in pf.schema_arrow.names:
        col = pf.read_row_group(rg, columns=[name]).column(0).combine_chunks()
        for arr in strings(col):
            # The values' bytes, back to back: a match that spans two adjacent values is reported too (the
            # safe side; it does not happen by chance).
            if (data := string_bytes(arr)) is not None:
                yield data
