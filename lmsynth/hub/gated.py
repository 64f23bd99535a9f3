"""A separate, gated HF repo for the recovered instructions: Hub gating instead of encryption.

Hub gating is a repo-level setting, so the gated text lives in its own repo (`gated_repo.repo`), never
in the public one. Gating is switched on BEFORE the first upload, so the plaintext is never public, not
even for a moment. The card carries `extra_gated_prompt` / `extra_gated_fields`, which the Hub shows on
the access form.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from lmsynth.errors import TargetError
from lmsynth.hub.retry import with_retries
from lmsynth.hub.tree import tree_files
from lmsynth.io import sha256_file
from lmsynth.release.layout import INDEX_CARD, MANIFEST_FILE
from lmsynth.release.manifest import GatedRepoSpec
from lmsynth.scratch import scratch_dir
from lmsynth.targets.base import PublishResult
from lmsynth.targets.hf import REPO_TYPE, HfTarget, get_hf_api, parse_repo_id


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
    from lmsynth import __version__
    from lmsynth.release.manifest import ChecksumManifest

    src = Path(src)
    files = [f for f in tree_files(src) if f not in (INDEX_CARD, MANIFEST_FILE)]
    if not files:
        raise TargetError(str(src), "no files to publish to the gated repo")
    target = HfTarget(parse_repo_id(spec.repo, "hf"))
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
        entries = {
            rel: {"sha256": sha256_file(stage / rel), "size": (stage / rel).stat().st_size}
            for rel in tree_files(stage)
        }
        manifest = ChecksumManifest.model_validate(
            {"version": tag, "tool_version": __version__, "subsets": {}, "files": entries}
        )
        (stage / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        return target.publish(stage, tag=tag, message=message or f"Release {tag} (gated)")
