"""Stage 2: flag empty translations and exact duplicates (pointing to the first occurrence, in input order).

This needs every row at once, so in distilabel it is a global step; the logic itself is this pure function.
"""

from __future__ import annotations

from collections.abc import Iterable

from lmsynth.pipeline.rows import FlagsOutput, PipelineRow


def mark_flags(rows: Iterable[PipelineRow]) -> list[FlagsOutput]:
    """Flags for rows in input order (`row_index`); the output is parallel to the input.

    Duplicates are exact matches of the stripped translated text; the unsafe set is flagged apart from the
    safe one, since the two are published as separate instruction files.
    """
    rows = list(rows)
    first: dict[tuple[bool, str], str] = {}
    flags: dict[int, FlagsOutput] = {}
    for row in sorted(rows, key=lambda r: r.row_index):
        text = row.instruction_ja.strip()
        if not text:
            flags[row.row_index] = FlagsOutput(empty=True)
            continue
        key = (row.record.flagged, text)
        original = first.setdefault(key, row.record.conversation_id)
        dup = original if original != row.record.conversation_id else None
        flags[row.row_index] = FlagsOutput(empty=False, duplicate_of=dup)
    return [flags[r.row_index] for r in rows]
