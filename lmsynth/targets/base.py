"""The target protocol and the URI parser that picks an implementation.

A target stores release trees under version tags. Every implementation is all-or-nothing: either the
tag points at a state holding every file of the tree, or there is no tag.
"""

from __future__ import annotations

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


@runtime_checkable
class Target(Protocol):
    """A place that holds tagged release trees."""

    uri: str

    def publish(self, tree: Path, *, tag: str, message: str, force: bool = False) -> PublishResult:
        """Store the release tree `tree` and point `tag` at it (no-op when identical)."""
        ...

    def fetch_file(self, path: str, *, revision: str) -> bytes | None:
        """One file of the tree at `revision` (tag or branch), or None when the revision or file is absent.

        The release builder reads the previous MANIFEST.json and gated ciphertexts through this, so that a
        re-release with unchanged plaintext reuses them and makes no commit.
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


def note_untagged(uri: str, tag: str) -> None:
    """From the start of a publish: an interruption now leaves `tag` unwritten (the tag is a publish's last act)."""
    interrupts.note(f"interrupted before {tag} was tagged on {uri}: nothing was published; rerun to publish")


def note_tagged(uri: str, tag: str) -> None:
    """From the moment `tag` is written: an interruption now leaves the release published."""
    interrupts.note(f"interrupted after {tag} was tagged on {uri}: {tag} is published")


def open_target(uri: str) -> Target:
    """Return the target for `uri`: `hf://ORG/NAME`, `ms://ORG/NAME`, or a local folder (`file://` optional).

    Raises:
        TargetError: the URI is malformed or its extra is not installed.
    """
    if uri.startswith("hf://"):
        from lmsynth.targets.hf import HfTarget

        return HfTarget.from_uri(uri)
    if uri.startswith("ms://"):
        from lmsynth.targets.modelscope import ModelScopeTarget

        return ModelScopeTarget.from_uri(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise TargetError(uri, "unknown target scheme; use a folder, file://PATH, hf://ORG/NAME or ms://ORG/NAME")
    from lmsynth.targets.local import LocalTarget

    return LocalTarget(Path(uri.removeprefix("file://")))
