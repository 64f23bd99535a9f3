"""The one writer of a run folder's `records/` and `unsafe/` part files, for `lmsynth run` and `gather` alike.

Both name and fill the parts the same way (`part-NNNNN.jsonl`, `shard_records` records each, in order; an
empty folder still gets an empty `part-00000.jsonl`), so a sharded run gathered and the unsharded run give
the same files. `run.json` carries `shard_records`, which is how `gather` knows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO


class PartWriter:
    """Appends record lines to `part-NNNNN.jsonl` files of `per_file` lines each, in order."""

    def __init__(self, folder: Path, *, per_file: int) -> None:
        """Write into `folder` (a temporary folder that replaces the real one when the writer's caller is done)."""
        self.folder, self.per_file = folder, per_file
        self.count = 0
        self._file: IO[bytes] | None = None

    def write(self, line: str | bytes) -> None:
        """Append one record (its JSON line, without the newline), starting a new part every `per_file` lines."""
        if self.count % self.per_file == 0:
            self._open(self.count // self.per_file)
        assert self._file is not None
        self._file.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
        self.count += 1

    def close(self) -> None:
        """Close the last part (an empty folder still gets one empty part, as readers expect)."""
        if self.count == 0:
            self._open(0)
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, k: int) -> None:
        if self._file is not None:
            self._file.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.folder / f"part-{k:05d}.jsonl", "wb")  # noqa: SIM115
