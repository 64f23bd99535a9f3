"""The content-addressed stage cache: `<cache>/<stage>/<fingerprint>/<unit digest>.json`.

distilabel's own cache ignores the input rows, so lmsynth keys its own: the folder fingerprint covers the
stage config, prompt texts and model identity; each unit (one batch of rows) is keyed by the digest of the
row fields the stage reads. A rerun reuses finished units and regenerates only units whose rows or config
changed; a killed run loses at most the units in flight, because each unit is written atomically.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.errors import InputRecordError
from lmsynth.fingerprint import FINGERPRINT_VERSION, digest_rows
from lmsynth.io import atomic_path, parse_line, private_dir
from lmsynth.pipeline.workdir import sweep_locks, unit_lock


logger = logging.getLogger(__name__)


class CachedUnit(StrictModel):
    """One cache file: the stage outputs (JSON strings) of one unit of rows, in row order."""

    stage: str
    fingerprint: str
    fingerprint_version: int = FINGERPRINT_VERSION
    input_digest: str
    outputs: list[str] = Field(description="One stage output (its model's JSON) per row.")


class StageCache:
    """The units of one stage under one fingerprint."""

    def __init__(self, root: Path | str, *, stage: str, fingerprint: str, scratch: Path | str | None = None) -> None:
        """The units of `stage` under `fingerprint` in cache `root`.

        Args:
            root: the cache root.
            stage: the stage name.
            fingerprint: the stage fingerprint (`config.stage_fingerprint`).
            scratch: where units are written before their rename (the run's work folder, which the next run
                removes if this one is killed); None: beside the units.
        """
        self.stage = stage
        self.fingerprint = fingerprint
        self.dir = Path(root) / stage / fingerprint
        self.scratch = Path(scratch) if scratch is not None else None

    def key(self, views: Sequence[Any]) -> str:
        """The unit key: digest of what the stage reads from each row, in order."""
        return digest_rows(views)

    def get(self, key: str, *, n_rows: int) -> list[str] | None:
        """The cached outputs for a unit, or None (missing, or unreadable and so recomputed)."""
        path = self.dir / f"{key}.json"
        if not path.is_file():
            return None
        try:
            unit = parse_line(path.read_text(encoding="utf-8"), CachedUnit, path=path, lineno=None)
        except InputRecordError as e:
            logger.warning("ignoring a damaged cache unit: %s", e)
            return None
        if unit.input_digest != key or len(unit.outputs) != n_rows:
            logger.warning("ignoring a cache unit that does not match its rows: %s", path)
            return None
        return unit.outputs

    def put(self, key: str, outputs: Sequence[str]) -> Path:
        """Write a unit atomically (temp file + rename)."""
        path = self.dir / f"{key}.json"
        unit = CachedUnit(stage=self.stage, fingerprint=self.fingerprint, input_digest=key, outputs=list(outputs))
        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, tmp_dir=self.scratch, private=True) as tmp:  # rows' gated text
            tmp.write_bytes(unit.__pydantic_serializer__.to_json(unit))
        return path

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """The lock under which unit `key` is computed (`<key>.lock`, removed on release)."""
        private_dir(self.dir)  # the units' folder: created private before the first lock or unit
        return unit_lock(self.dir / f"{key}.lock")

    def sweep(self) -> int:
        """Remove unit locks that no process holds (left by a killed run); return how many."""
        return sweep_locks(self.dir)

    def units(self) -> list[Path]:
        """The finished unit files."""
        return sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []
