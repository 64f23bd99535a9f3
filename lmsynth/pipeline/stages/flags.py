"""Stage 2: flag empty translations and exact duplicates (pointing to the first occurrence, in input order).

A run moves through its input in windows, and a duplicate may sit windows after its original: `FirstSeen`
carries the first occurrence of every translated text from one window to the next. It keys texts by a
128-bit digest, so it costs ~100 bytes per distinct instruction however long the texts are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from lmsynth.io import write_text
from lmsynth.pipeline.pipeline_row import FlagsOutput, PipelineRow


class FirstSeen:
    """First occurrence (conversation id) per (unsafe set or not, stripped translated text)."""

    def __init__(self, first: dict[str, str] | None = None) -> None:
        """Start from `first` (digest key → conversation id), or empty."""
        self.first: dict[str, str] = first if first is not None else {}

    @staticmethod
    def key(flagged: bool, text: str) -> str:
        """The unsafe and safe sets are deduplicated apart: they are published as separate files."""
        return f"{int(flagged)}{hashlib.sha256(text.encode('utf-8')).hexdigest()[:32]}"

    def claim(self, flagged: bool, text: str, conversation_id: str) -> str | None:
        """Record `conversation_id` as the first holder of `text` unless one exists; return that earlier one."""
        original = self.first.setdefault(self.key(flagged, text), conversation_id)
        return original if original != conversation_id else None

    def add(self, key: str, conversation_id: str) -> None:
        """Take a first occurrence found in a finished window (`key` as `FirstSeen.key` makes it)."""
        self.first.setdefault(key, conversation_id)

    def write(self, path: Path | str) -> None:
        """Save for the flags step of the next window (atomically)."""
        write_text(path, json.dumps(self.first, separators=(",", ":")))

    @classmethod
    def read(cls, path: Path | str) -> FirstSeen:
        """Load what `write` saved."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))


def mark_flags(rows: Iterable[PipelineRow], *, seen: FirstSeen | None = None) -> list[FlagsOutput]:
    """Flags for rows in input order (`row_index`); the output is parallel to the input.

    Duplicates are exact matches of the stripped translated text, against earlier rows and `seen` (earlier
    windows of the run); the unsafe set is flagged apart from the safe one.
    """
    rows = list(rows)
    seen = seen if seen is not None else FirstSeen()
    flags: dict[int, FlagsOutput] = {}
    for row in sorted(rows, key=lambda r: r.row_index):
        text = row.instruction_ja.strip()
        if not text:
            flags[row.row_index] = FlagsOutput(empty=True)
            continue
        dup = seen.claim(row.record.flagged, text, row.record.conversation_id)
        flags[row.row_index] = FlagsOutput(empty=False, duplicate_of=dup)
    return [flags[r.row_index] for r in rows]
