"""Send an export folder to the user's own repo through the targets, optionally private.

An export is published like a release tree: its MANIFEST.json lists every file, the target commits them in
one commit and tags it. The data inherits the LMSYS-Chat-1M agreement, so `private` is honoured before the
first upload: the repo is created private (or switched to private) before the target touches it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmsynth.errors import ExportError
from lmsynth.targets import PublishResult, open_target


logger = logging.getLogger(__name__)


def publish_export(out_dir: Path | str, *, target_uri: str, tag: str, private: bool) -> PublishResult:
    """Publish an export folder to `target_uri` under `tag`.

    Args:
        out_dir: a folder written by `export_sft` / `export_dpo` (with its MANIFEST.json).
        target_uri: `hf://ORG/NAME`, `ms://ORG/NAME` or a local hub folder.
        tag: the tag to point at the commit (e.g. `sft-v0.5`).
        private: make the repo private before anything is uploaded.

    Returns:
        The target's publish result.

    Raises:
        ExportError: `private` was asked for a target where lmsynth cannot set visibility.
        TargetError: the target refused or kept failing.
    """
    if not tag:
        raise ExportError("`tag` can't be empty")
    target = open_target(target_uri)
    if private:
        if not target.can_make_private:
            raise ExportError(f"{target_uri}: `--private` is supported for hf:// targets and local folders only")
        target.make_private()
    return target.publish(Path(out_dir), tag=tag, message=f"Export {tag}")
