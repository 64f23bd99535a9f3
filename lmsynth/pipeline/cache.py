"""The content-addressed stage cache: `<cache>/<stage>/<fingerprint>/<unit digest>.json`.

distilabel's own cache ignores the input rows, so lmsynth keys its own: the folder fingerprint covers the
stage config, prompt texts and model identity; each unit (one batch of rows) is keyed by the digest of the
row fields the stage reads. A rerun reuses finished units and regenerates only units whose rows or config
changed; a killed run loses at most the units in flight, because each unit is written atomically.

A unit proves itself before it is served: it names the stage, fingerprint and key it was computed for and
carries the sha256 of its canonical payload, and each output must parse as the stage's output model. A unit
that fails any of these (a flipped byte, invalid UTF-8, a truncated or hand-edited file, a unit copied under
another key, a unit written by an older format) is invalid: it is dropped and recomputed, and counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, ValidationError

from lmsynth.config import StrictModel
from lmsynth.errors import InputRecordError
from lmsynth.fingerprint import FINGERPRINT_VERSION, canonical_json, digest_rows
from lmsynth.io import atomic_path, parse_line, private_dir
from lmsynth.pipeline.pipeline_row import STAGE_OUTPUTS
from lmsynth.pipeline.workdir import sweep_locks, unit_lock


logger = logging.getLogger(__name__)

UNIT_FORMAT = 2  # 1: no checksum (such units are invalid and recomputed)


class CachedUnit(StrictModel):
    """One cache file: the stage outputs (JSON strings) of one unit of rows, in row order, and their checksum."""

    format: Literal[2] = UNIT_FORMAT
    stage: str
    fingerprint: str
    fingerprint_version: int = FINGERPRINT_VERSION
    input_digest: str = Field(description="The unit key: the digest of the rows it was computed for.")
    outputs: list[str] = Field(description="One stage output (its model's JSON) per row.")
    checksum: str = Field(description="sha256 of the canonical JSON of every other field (`unit_checksum`).")


def unit_checksum(unit: CachedUnit) -> str:
    """sha256 over the canonical JSON of the unit without its checksum."""
    payload = unit.model_dump(mode="json", exclude={"checksum"})
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class CacheRead(NamedTuple):
    """What a cache lookup found: the outputs of a valid unit, or None; and whether an invalid unit was there."""

    outputs: list[str] | None
    invalid: bool = False


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
        """The cached outputs for a unit, or None (missing, or invalid and so to be recomputed)."""
        return self.read(key, n_rows=n_rows).outputs

    def read(self, key: str, *, n_rows: int) -> CacheRead:
        """Look unit `key` up and prove it: its checksum, its stage, fingerprint and key, and every output."""
        path = self.dir / f"{key}.json"
        try:
            if not stat.S_ISREG(path.stat().st_mode):  # a folder or a pipe is no unit (and a pipe would block)
                return self._invalid(path, "not a regular file")
            data = path.read_bytes()
        except FileNotFoundError:
            return self._invalid(path, "a dangling link") if path.is_symlink() else CacheRead(None)
        except OSError as e:
            return self._invalid(path, f"cannot read: {e.strerror or e}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return self._invalid(path, f"not UTF-8 (byte {e.start})")
        try:
            unit = parse_line(text, CachedUnit, path=path, lineno=None)
        except InputRecordError as e:
            return self._invalid(path, e.message if e.field is None else f"field `{e.field}`: {e.message}")
        if unit.checksum != unit_checksum(unit):
            return self._invalid(path, "checksum mismatch: the unit changed after it was written")
        if (unit.stage, unit.fingerprint, unit.input_digest) != (self.stage, self.fingerprint, key):
            return self._invalid(path, "written for another stage, fingerprint or key")
        if len(unit.outputs) != n_rows:
            return self._invalid(path, f"{len(unit.outputs)} outputs for {n_rows} rows")
        model = STAGE_OUTPUTS.get(self.stage)
        if model is not None:
            for index, output in enumerate(unit.outputs):
                try:
                    model.model_validate_json(output, strict=True)
                except ValidationError as e:
                    return self._invalid(path, f"output {index} is not a {self.stage} output: {e.errors()[0]['msg']}")
        return CacheRead(unit.outputs)

    def drop(self, key: str) -> None:
        """Remove unit `key` (an invalid one, before it is recomputed under its lock)."""
        path = self.dir / f"{key}.json"
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def put(self, key: str, outputs: Sequence[str]) -> Path:
        """Write a unit atomically (temp file + rename)."""
        path = self.dir / f"{key}.json"
        unit = CachedUnit(
            stage=self.stage, fingerprint=self.fingerprint, input_digest=key, outputs=list(outputs), checksum=""
        )
        unit = unit.model_copy(update={"checksum": unit_checksum(unit)})
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

    def _invalid(self, path: Path, why: str) -> CacheRead:
        logger.warning("dropping an invalid cache unit (recomputed): %s: %s", path, why)
        return CacheRead(None, invalid=True)
