"""Batch events: what a step process reports of one LLM batch, appended as a line to an events folder.

distilabel runs steps in other processes (or Ray actors); each appends its events to its own file, and the
collector in the main process follows the folder (`collector.Telemetry.follow`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from lmsynth.config import StrictModel


EVENTS_DIR = "telemetry"  # inside a run's work folder: one `events-<pid>.jsonl` per process


class BatchEvent(StrictModel):
    """One LLM batch, as a step process reports it (one line of an events file)."""

    step: str
    rows: int = Field(0, ge=0, description="Rows this batch finished for its step, served from the cache or not.")
    requests: int = Field(ge=0)
    generations: int = Field(0, ge=0)
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    failures: int = Field(0, ge=0)
    retries: int = Field(0, ge=0)
    seconds: float = Field(0.0, ge=0, description="Time inside model calls (engine start excluded).")
    started_at: float | None = Field(None, description="Epoch seconds when the first model call began.")
    ended_at: float | None = Field(None, description="Epoch seconds when the last model call ended.")
    cached: bool = Field(False, description="The batch was one cache unit served from the stage cache.")
    units_invalid: int = Field(0, ge=0, description="Invalid cache units this batch dropped and recomputed.")


def append_event(events_dir: Path | str, event: BatchEvent) -> None:
    """Append `event` to this process's events file (one `write` of one line, so lines never interleave)."""
    events_dir = Path(events_dir)
    events_dir.mkdir(parents=True, exist_ok=True)
    line = (event.model_dump_json() + "\n").encode("utf-8")
    fd = os.open(events_dir / f"events-{os.getpid()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
