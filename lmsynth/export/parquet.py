"""Streaming Parquet writer for the export splits: bounded memory, `datasets`-style shard names."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Literal

from pydantic import BaseModel


class SplitWriter:
    """Append rows per split; rotate shards every `shard_rows`; name them `<split>-NNNNN-of-MMMMM.parquet`.

    Rows are buffered `batch_rows` at a time and appended as row groups, so memory does not grow with the
    export. The final names need the shard count, so shards are renamed when the writer closes. A `train`
    shard is always written (empty if need be) so that the config loads even when every row was filtered.
    """

    def __init__(self, root: Path, *, config: Literal["sft", "dpo"], shard_rows: int, batch_rows: int) -> None:
        """Store options; nothing is opened until the first row."""
        self.root = root
        self.config = config
        self.shard_rows = shard_rows
        self.batch_rows = batch_rows
        self.rows: dict[str, int] = {}
        self.files: list[str] = []
        self._schema = _schema(config)
        self._buffers: dict[str, list[dict]] = {}
        self._writers: dict[str, object] = {}
        self._shards: dict[str, list[Path]] = {}
        self._in_shard: dict[str, int] = {}

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            for w in self._writers.values():
                w.close()  # type: ignore[attr-defined]

    def add(self, split: str, row: BaseModel) -> None:
        """Queue one row for `split`."""
        buf = self._buffers.setdefault(split, [])
        buf.append(row.model_dump(mode="json"))
        self.rows[split] = self.rows.get(split, 0) + 1
        if len(buf) >= self.batch_rows:
            self._flush(split)

    def close(self) -> None:
        """Flush every split, close the shards and give them their final names."""
        self.rows.setdefault("train", 0)
        for split in sorted(self.rows):
            self._flush(split, final=True)
        for split in sorted(self._shards):
            paths = self._shards[split]
            for i, path in enumerate(paths):
                final = path.with_name(f"{split}-{i:05d}-of-{len(paths):05d}.parquet")
                os.replace(path, final)
                self.files.append(final.relative_to(self.root).as_posix())

    # Private helpers

    def _flush(self, split: str, *, final: bool = False) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = self._buffers.get(split, [])
        while buf or (final and split not in self._shards):
            writer = self._writers.get(split)
            if writer is None:
                path = self.root / self.config / f".{split}-{len(self._shards.get(split, [])):05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, self._schema, compression="zstd")
                self._writers[split] = writer
                self._shards.setdefault(split, []).append(path)
                self._in_shard[split] = 0
            room = self.shard_rows - self._in_shard[split]
            chunk, buf = buf[:room], buf[room:]
            if chunk:
                writer.write_table(pa.Table.from_pylist(chunk, schema=self._schema))  # type: ignore[attr-defined]
                self._in_shard[split] += len(chunk)
            if self._in_shard[split] >= self.shard_rows:
                writer.close()  # type: ignore[attr-defined]
                del self._writers[split]
        self._buffers[split] = []
        if final and split in self._writers:
            self._writers.pop(split).close()  # type: ignore[attr-defined]


def _schema(config: Literal["sft", "dpo"]):  # noqa: ANN202 — pyarrow is imported lazily
    """Explicit Arrow schemas: the column types never depend on which rows happen to come first."""
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    if config == "sft":
        return pa.schema([("messages", messages)])
    return pa.schema(
        [
            ("prompt", messages),
            ("chosen", messages),
            ("rejected", messages),
            ("score_chosen", pa.float64()),
            ("score_rejected", pa.float64()),
        ]
    )
