"""The target protocol: what every target does, and the optional abilities it declares.

A target stores release trees under version tags. Every implementation is all-or-nothing: either the
tag points at a state holding every file of the tree, or there is no tag. `open_target` (`registry`) picks
the implementation for a URI; this module imports none of them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol, runtime_checkable

from lmsynth import interrupts
from lmsynth.config import StrictModel
from lmsynth.errors import TargetError


class PublishResult(StrictModel):
    """What a publish did."""

    target: str
    tag: str
    commit: str | None
    created_commit: bool
    moved_tag: bool = False


class CardLinks(StrictModel):
    """How a release's cards point at its files and show loading it, for one target and version."""

    link_base: str = ""
    load_path: str = "."
    revision: str | None = None


@runtime_checkable
class Target(Protocol):
    """A place that holds tagged release trees.

    Abilities not every target has come with a default here (a target says it has one by overriding it):
    `lock` (no lock), `working_folder` (none), `make_private` (`can_make_private` False: refused).
    """

    uri: str
    can_make_private: bool = False

    def publish(self, tree: Path, *, tag: str, message: str, force: bool = False) -> PublishResult:
        """Store the release tree `tree` and point `tag` at it (no-op when identical)."""
        ...

    def fetch_file(self, path: str, *, revision: str) -> bytes | None:
        """One file of the tree at `revision` (tag or branch), or None when the target says it is absent.

        Absent means the target answered so (a 404 for the file, the revision or the repo); a read that failed
        for any other reason raises `TargetError`. The release builder reads the previous MANIFEST.json and
        gated ciphertexts through this, so that a re-release with unchanged plaintext reuses them.
        """
        ...

    def download(self, tag: str, dest: Path) -> Path:
        """Materialise the tree tagged `tag` into `dest` and return it."""
        ...

    def load_dataset_args(self, tag: str) -> tuple[str, dict] | None:
        """`(path, kwargs)` so that `datasets.load_dataset(path, config, **kwargs)` loads `tag`.

        None where `datasets` cannot load from the target itself: its download (`download(tag, dest)`) is loaded.
        """
        ...

    def card_links(self, version: str) -> CardLinks:
        """The cards' file links and `load_dataset` example for `version` on this target."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the target against other releases, from reading the published release to the tag (default: none)."""
        return contextlib.nullcontext()

    def working_folder(self, tag: str) -> Path | None:
        """A folder `load_dataset` reads directly when it holds `tag` (default: none)."""
        return None

    def make_private(self) -> None:
        """Create the repo private, or switch it to private, before anything is uploaded."""
        raise TargetError(self.uri, "lmsynth cannot set this target's visibility")


def note_untagged(uri: str, tag: str) -> None:
    """From the start of a publish: an interruption now leaves `tag` unwritten (the tag is a publish's last act)."""
    interrupts.note(f"interrupted before {tag} was tagged on {uri}: nothing was published; rerun to publish")


def note_tagged(uri: str, tag: str) -> None:
    """From the moment `tag` is written: an interruption now leaves the release published."""
    interrupts.note(f"interrupted after {tag} was tagged on {uri}: {tag} is published")
