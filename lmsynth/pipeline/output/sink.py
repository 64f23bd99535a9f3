"""The last step of a window: finished rows become records in files, and only a small summary goes back.

distilabel hands the leaf step's rows back as a Distiset (Parquet files loaded through `datasets`, which
also copies them into its own cache folder). A v0.5 row carries ten responses, so the whole window would
cross processes and disks twice more just to be written once. Instead the last step assembles each row's
`SynthRecord`, appends it to a batch file in the run's work folder, and returns a `RowSummary` (counts,
tokens, the row's first-occurrence key for the flags stage); the runner merges the batch files in input
order into the run folder.

A batch file line is `<row_index> <0|1 unsafe> <SynthRecord JSON>`: the runner orders lines by their index
and copies the JSON as it is, without parsing it again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.io import dump_json_line, write_text
from lmsynth.pipeline.output.assemble import to_synth_record, to_unsafe_record
from lmsynth.pipeline.pipeline_row import PipelineRow
from lmsynth.pipeline.stages.flags import FirstSeen
from lmsynth.records import Usage, record_counts


class RowSummary(StrictModel):
    """What the runner needs of one finished row besides its record."""

    row_index: int = Field(ge=0)
    unsafe: bool = False
    failed: list[str] = Field(default_factory=list, description="Stages that returned no output for the row.")
    tokens: dict[str, Usage] = Field(default_factory=dict, description="Usage per LLM stage.")
    counts: dict[str, int] = Field(default_factory=dict, description="What the row adds to `RunCounts`.")
    first_key: str | None = Field(None, description="`FirstSeen` key when the row is a first occurrence.")


def finish_rows(
    raws: Sequence[dict],
    *,
    stages: Sequence[str],
    llm_stages: Sequence[str],
    english: bool,
    multiturn: bool,
    judged: bool,
    records_dir: Path,
) -> list[RowSummary]:
    """Write the records of a batch of finished rows into `records_dir`; return one summary per row."""
    summaries, lines = [], []
    for raw in raws:
        failed = [s for s in stages if not raw.get(s)]
        if failed:
            summaries.append(RowSummary(row_index=raw["row_index"], failed=failed))
            continue
        row = PipelineRow.from_columns(raw)
        unsafe = row.record.flagged
        record = to_unsafe_record(row) if unsafe else to_synth_record(row, english=english, multiturn=multiturn)
        lines.append(f"{row.row_index} {int(unsafe)} {dump_json_line(record)}\n")
        summaries.append(_summary(row, record, llm_stages=llm_stages, judged=judged))
    if lines:
        path = records_dir / f"{summaries[0].row_index:012d}-{os.getpid()}.txt"
        write_text(path, "".join(lines), private=True)
    return summaries


def read_records(records_dir: Path) -> Iterator[tuple[int, bool, str]]:
    """(row index, unsafe, record JSON) of every finished row of a window, in input order."""
    entries = []
    for path in records_dir.glob("*.txt") if records_dir.is_dir() else []:
        with open(path, encoding="utf-8") as f:
            for line in f:
                index, unsafe, record = line.rstrip("\n").split(" ", 2)
                entries.append((int(index), unsafe == "1", record))
    entries.sort(key=lambda e: e[0])
    yield from entries


def _summary(row: PipelineRow, record, *, llm_stages: Sequence[str], judged: bool) -> RowSummary:
    tokens = {s: out.usage for s in llm_stages if (out := row.output(s)) is not None}
    counts = {"translated": int(bool(row.translate and row.translate.translated))}
    if row.record.flagged:
        counts["unsafe"] = 1
    else:
        counts |= record_counts(record, judged=judged)
    flags = row.flags
    first = flags is not None and not flags.empty and flags.duplicate_of is None
    key = FirstSeen.key(row.record.flagged, row.instruction_ja.strip()) if first else None
    return RowSummary(row_index=row.row_index, unsafe=row.record.flagged, tokens=tokens, counts=counts, first_key=key)
