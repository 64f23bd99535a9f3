"""A separate, gated HF repo for the recovered instructions: Hub gating instead of encryption.

Hub gating is a repo-level setting, so the gated text lives in its own repo (`gated_repo.repo`), never
in the public one. Gating is switched on BEFORE the first upload, so the plaintext is never public, not
even for a moment. The card carries `extra_gated_prompt` / `extra_gated_fields`, which the Hub shows on
the access form.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.errors import TargetError
from lmsynth.scratch import scratch_dir
from lmsynth.targets._retry import with_retries
from lmsynth.targets.base import PublishResult
from lmsynth.targets.hf import REPO_TYPE, HfTarget, get_hf_api
from lmsynth.targets.schemes import HF, HF_URI_PATTERN, parse_repo_id
from lmsynth.tree.layout import INDEX_CARD
from lmsynth.tree.manifest_json import tree_files, write_manifest


class GatedRepoSpec(StrictModel):
    """The release manifest's `gated_repo:` switch: this target's settings."""

    repo: str = Field(pattern=HF_URI_PATTERN, description="hf://ORG/NAME of the gated repo (not the public one).")
    prompt: str = Field(min_length=1, description="`extra_gated_prompt`: the terms users accept.")
    fields: dict[str, str | dict] = Field(default_factory=dict, description="`extra_gated_fields` of the form.")
    mode: Literal["auto", "manual"] = Field("manual", description="Approval of access requests.")


def gated_card(spec: GatedRepoSpec, *, metadata: dict | None = None, body: str = "") -> str:
    """The gated repo's card: `metadata` plus the gating fields, YAML dumped in order."""
    meta = {**(metadata or {}), "extra_gated_prompt": spec.prompt}
    if spec.fields:
        meta["extra_gated_fields"] = dict(spec.fields)
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n\n{body}"


def publish_gated_repo(
    src: Path, *, spec: GatedRepoSpec, tag: str, message: str | None = None, metadata: dict | None = None
) -> PublishResult:
    """Publish the files of `src` (recovered instructions) to the gated repo of `spec`, tagged `tag`.

    Args:
        src: a folder of plaintext files to publish (its README.md, if any, is replaced by the gated card).
        spec: the gated repo switch of the release manifest.
        tag: the version tag.
        message: commit message (default: `Release <tag> (gated)`).
        metadata: card YAML besides the gating fields (license, language, configs, ...).

    Returns:
        The `PublishResult` of the gated repo.

    Raises:
        TargetError: `src` is empty or the Hub refused (see `HfTarget.publish`).
    """
    src = Path(src)
    files = [f for f in tree_files(src) if f != INDEX_CARD]
    if not files:
        raise TargetError(str(src), "no files to publish to the gated repo")
    target = HfTarget(parse_repo_id(spec.repo, HF))
    api = get_hf_api()

    def gate() -> None:
        api.create_repo(target.repo_id, repo_type=REPO_TYPE, exist_ok=True)
        api.update_repo_settings(target.repo_id, gated=spec.mode, repo_type=REPO_TYPE)

    with_retries(gate, target=target.uri, action="turn gating on", policy=target.retry)
    with scratch_dir("gated-upload") as stage:  # plaintext: a scratch folder, removed after a kill
        for rel in files:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, stage / rel)
        (stage / INDEX_CARD).write_text(gated_card(spec, metadata=metadata), encoding="utf-8")
        write_manifest(stage, version=tag)
        return target.publish(stage, tag=tag, message=message or f"Release {tag} (gated)")
