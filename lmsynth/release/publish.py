"""Publish an already-built release tree: what the release workflow's `publish` job runs.

The tree is the artifact the `plan` job built (and leak-scanned) with `--dry-run`; publishing it again
re-checks every file against MANIFEST.json, and re-runs the leak guard when the caller still has the
gated strings, before the first request to any hub.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmsynth.errors import TargetError
from lmsynth.release.leak_guard import GatedIndex, scan_tree
from lmsynth.targets import PublishResult, open_target
from lmsynth.tree.layout import MANIFEST_FILE
from lmsynth.tree.manifest_json import check_tree


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
        TargetError: `tree` is not a folder with a MANIFEST.json, or the target failed (see the target's errors).
        ChecksumError: `tree` breaks the tree rule (`lmsynth.tree.manifest_json`): a file unlisted, missing or changed.
        LeakError: a public file holds gated text.
        TagConflictError: `tag` exists on different content and `force` is off.
    """
    tree = Path(tree)
    if not tag:
        raise TargetError(to, "`tag` can't be empty")
    if not tree.is_dir():
        raise TargetError(str(tree), "not a folder; pass the release tree built by `lmsynth release --dry-run`")
    if not (tree / MANIFEST_FILE).is_file():
        raise TargetError(str(tree), f"not a release tree: no {MANIFEST_FILE}; build it with `lmsynth release`")
    check_tree(tree)
    if leak_index is not None:
        scan_tree(tree, leak_index)
    target = open_target(to)
    result = target.publish(tree, tag=tag, message=message or f"Release {tag}", force=force)
    log.info("published %s to %s at %s", tag, target.uri, result.commit)
    return result
