"""Publish an already-built release tree: what the release workflow's `publish` job runs.

The tree is the artifact the `plan` job built (and leak-scanned) with `--dry-run`; publishing it again
re-checks every file against MANIFEST.json, and re-runs the leak guard when the caller still has the
gated strings, before the first request to any hub.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from lmsynth.errors import TargetError
from lmsynth.hub.tree import check_tree
from lmsynth.targets.base import PublishResult, open_target


if TYPE_CHECKING:
    from lmsynth.release.leak_guard import GatedIndex


log = logging.getLogger(__name__)


def publish_tree(
    tree: Path,
    *,
    to: str,
    tag: str,
    force: bool = False,
    message: str | None = None,
    leak_index: GatedIndex | None = None,
) -> PublishResult:
    """Publish the release tree `tree` to the target `to` under `tag`.

    Args:
        tree: a built release tree (MANIFEST.json at its root).
        to: a target URI: a folder, `hf://ORG/NAME` or `ms://ORG/NAME`.
        tag: the version tag, e.g. `v0.5`.
        force: move `tag` if it already points at different content.
        message: commit message (default: `Release <tag>`).
        leak_index: the gated strings, when known: the leak guard scans the tree before any network call.

    Returns:
        The target's `PublishResult`.

    Raises:
        TargetError: `tree` is not a release tree, or the target failed (see the target's errors).
        ChecksumError: a file does not match MANIFEST.json.
        LeakError: a public file holds gated text.
        TagConflictError: `tag` exists on different content and `force` is off.
    """
    tree = Path(tree)
    if not tag:
        raise TargetError(to, "`tag` can't be empty")
    if not tree.is_dir():
        raise TargetError(str(tree), "not a folder; pass the release tree built by `lmsynth release --dry-run`")
    check_tree(tree)
    if leak_index is not None:
        from lmsynth.release.leak_guard import scan_tree

        scan_tree(tree, leak_index)
    target = open_target(to)
    result = target.publish(tree, tag=tag, message=message or f"Release {tag}", force=force)
    log.info("published %s to %s at %s", tag, target.uri, result.commit)
    return result
