"""What an output folder (`--out`) may replace: one check, made by every verb before any work.

An output folder is replaced only when it is absent or empty, or a folder lmsynth wrote for the same kind
of output, and only when it is not an input of the command, holds none, is not inside one, and is not the
target (a local hub folder), the cache or the current folder (or one above it). Anything else is one line
naming both paths, before anything is read or written. `--out` given as a link keeps the link: the folder
it points to is what gets replaced.

How lmsynth knows its own folders: prepared, run and recovered folders carry `.lmsynth-out.json`
(`OutMarker`), written inside the folder before it is renamed into place (a run writes it first, since a run
folder fills in place and a killed run's folder must be resumable). A release tree and an export folder
must hold only what their MANIFEST.json lists (it is published as it is), so their MANIFEST.json is their
marker. Folders written before the marker existed are recognised by their own layout: a prepared folder by
`_COMPLETE`, a run folder by `run.json`, `shard.json`, `run_report.json` or a killed run's temporary entries,
a recovered folder by `recover_report.json`, and only when every entry in them is one that verb writes.
A local target folder (`release --to DIR`) gets the first half of the check (`apart`): it is a git
repository the target itself guards, but it may not be, hold or sit inside an input either.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from lmsynth import __version__, constants
from lmsynth.config import StrictModel
from lmsynth.errors import OutDirError
from lmsynth.io import write_text
from lmsynth.targets.schemes import local_folder


MARKER_FILE = ".lmsynth-out.json"

OutKind = Literal["prepared", "run", "recovered", "release tree", "export"]

# The entries only a run folder has: its files, its engine logs, and what a killed run leaves.
_RUN_SIGNS = ("run.json", "run_report.json", "shard.json", "logs", ".records.*", ".unsafe.*", ".*.tmp")
# What each kind holds, for folders lmsynth wrote before the marker existed: (names it may hold, names one of
# which it must hold). Release trees and exports have no such layout: their MANIFEST.json decides.
_LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prepared": (("instructions.jsonl", "unsafe.jsonl", "stats.json", "_COMPLETE"), ("_COMPLETE",)),
    "run": (("records", "unsafe", *_RUN_SIGNS), _RUN_SIGNS),
    "recovered": (("*",), ("recover_report.json",)),
}
_A = {
    "prepared": "a prepared folder",
    "run": "a run folder",
    "recovered": "a recovered folder",
    "release tree": "a release tree",
    "export": "an export folder",
}
_MANIFEST = "MANIFEST.json"
_EXPORT_STATS = "export_stats.json"


class OutMarker(StrictModel):
    """`.lmsynth-out.json`: which kind of output lmsynth wrote into this folder."""

    kind: OutKind
    tool_version: str


def check_out(
    out: Path | str,
    *,
    kind: OutKind,
    inputs: Iterable[Path | str | None] = (),
    targets: Iterable[Path | str | None] = (),
) -> Path:
    """Refuse `out` unless this command may replace it (module docstring); return the folder to write.

    Args:
        out: the output folder as given.
        kind: what the command writes there.
        inputs: local files and folders the command reads (URLs and None are skipped).
        targets: local target folders (a hub folder) the command publishes to or reads from.

    Returns:
        `out` with `.`/`..` collapsed and a link followed: the real folder to build beside and replace.

    Raises:
        OutDirError: `out` may not be replaced; one line naming it and the path it collides with.
    """
    shown = str(out)
    real = apart(out, inputs=inputs, targets=targets)
    if real.exists() and not real.is_dir():
        raise OutDirError(shown, str(real), f"output folder {shown} exists and is not a folder")
    if real.is_dir():
        found = kind_of(real)
        if found is None and any(real.iterdir()):
            names = ", ".join(sorted(p.name for p in real.iterdir())[:3])
            raise OutDirError(
                shown,
                str(real),
                f"output folder {shown} is not empty and lmsynth did not write it (it holds {names})",
            )
        if found is not None and found != kind:
            raise OutDirError(
                shown,
                str(real),
                f"output folder {shown} is {_A[found]}, not {_A[kind]}: lmsynth replaces only its own kind",
            )
    return real


def apart(
    out: Path | str,
    *,
    inputs: Iterable[Path | str | None] = (),
    targets: Iterable[Path | str | None] = (),
    what: str = "output folder",
) -> Path:
    """Refuse `out` when it is, holds or lies inside an input, a target, the cache or the current folder.

    The half of `check_out` that also guards what a command writes that is not an `--out` (a local target).

    Returns:
        `out` with `.`/`..` collapsed and a link followed.

    Raises:
        OutDirError: one line naming `out` and the path it collides with.
        OSError: `out` is a symlink loop (ELOOP).
    """
    shown = str(out)
    real = Path(os.path.realpath(out))
    if real.is_symlink():  # realpath stops at a link it cannot follow: a loop
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), shown)
    cwd = Path(os.path.realpath(Path.cwd()))
    if real == cwd or real in cwd.parents:
        raise OutDirError(shown, str(cwd), f"{what} {shown} is the current folder or one above it ({cwd})")
    protected = [(p, "an input of this command") for p in _local(inputs)]
    protected += [(p, "the target of this command") for p in _local(targets)]
    protected.append((Path(constants.CACHE_DIR), "lmsynth's cache ($LMSYNTH_CACHE)"))
    for path, role in protected:
        other = Path(os.path.realpath(path))
        if real == other:
            raise OutDirError(shown, str(path), f"{what} {shown} would replace {path}, {role}")
        if other.is_relative_to(real):
            raise OutDirError(shown, str(path), f"{what} {shown} contains {path}, {role}")
        if real.is_relative_to(other):
            raise OutDirError(shown, str(path), f"{what} {shown} is inside {path}, {role}")
    return real


def kind_of(folder: Path) -> OutKind | None:
    """Which kind of output lmsynth wrote in `folder`, or None (not lmsynth's, or empty)."""
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return None
    if MARKER_FILE in names:
        try:
            return OutMarker.model_validate_json((folder / MARKER_FILE).read_bytes(), strict=True).kind
        except ValidationError:
            return None
    if _MANIFEST in names and ".git" not in names and (tree := _tree_kind(folder, names)) is not None:
        return tree
    for kind, (allowed, required) in _LAYOUTS.items():
        matches = [any(fnmatch.fnmatch(n, a) for a in allowed) for n in names]
        if all(matches) and any(fnmatch.fnmatch(n, r) for n in names for r in required):
            return kind  # type: ignore[return-value]
    return None


def mark(folder: Path | str, kind: OutKind) -> None:
    """Write the marker into `folder` (a folder about to be renamed into place, or a run folder as it starts)."""
    write_text(Path(folder) / MARKER_FILE, OutMarker(kind=kind, tool_version=__version__).model_dump_json() + "\n")


def source_input(source: object) -> Path | None:
    """The local file or folder a `--source` reads (the bundled sample for None), or None for a hub id."""
    if source is None:
        return constants.SAMPLE_SOURCE
    path = getattr(source, "path", source)
    return Path(path) if isinstance(path, str | Path) and os.path.lexists(path) else None


# Private helpers


def _local(paths: Iterable[Path | str | None]) -> list[Path]:
    """The local paths among `paths`: URLs (`hf://`, `ms://`, ...) and None left out, `file://` stripped."""
    found = []
    for p in paths:
        if p is None:
            continue
        folder = local_folder(str(p))
        if folder is not None:
            found.append(Path(folder))
    return found


def _tree_kind(folder: Path, names: list[str]) -> OutKind | None:
    """A release tree or an export folder, by its MANIFEST.json (which lists every other file of it)."""
    from lmsynth.tree.manifest_json import ChecksumManifest

    try:
        manifest = ChecksumManifest.model_validate_json((folder / _MANIFEST).read_bytes(), strict=True)
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if any(n != _MANIFEST and not any(f == n or f.startswith(n + "/") for f in manifest.files) for n in names):
        return None  # a file the manifest does not list: someone else's folder
    if _EXPORT_STATS in manifest.files and not manifest.subsets:
        return "export"
    if manifest.subsets and "recover_report.json" not in names:
        return "release tree"
    return None
