"""The HF target against the local Hub stand-in, through the real huggingface_hub and datasets clients."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lmsynth.errors import ChecksumError, HubAuthError, HubRateLimitError, TagConflictError, TargetError
from lmsynth.hub.retry import RetryPolicy
from lmsynth.targets import open_target
from lmsynth.targets.hf import HfTarget
from tests.hub.hf_server import HubState
from tests.hub.trees import CONFIG, write_manifest, write_tree


pytestmark = pytest.mark.hub

REPO = "org/synth"


def _load(repo: str, revision: str, config: str = CONFIG) -> list[str]:
    from datasets import load_dataset

    ds = load_dataset(repo, config, split="train", revision=revision)
    return ds["conversation_id"]


def _tree_on(state: HubState, tag: str) -> dict[str, str]:
    repo = state.repo(REPO)
    return {p: b.sha256 for p, b in repo.commits[repo.tags[tag]].files.items()}


class TestPublish:
    def test_release_loads_with_load_dataset_at_the_tag(self, hf_hub: HubState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5", rows=7, seed="a")
        result = open_target(f"hf://{REPO}").publish(tree, tag="v0.5", message="Release v0.5")
        assert result.created_commit and result.tag == "v0.5"
        assert hf_hub.repo(REPO).tags["v0.5"] == result.commit
        assert _load(REPO, "v0.5") == [f"a-{CONFIG}-{i}" for i in range(7)]

    def test_one_commit_holds_every_manifest_file(self, hf_hub: HubState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        HfTarget(REPO).publish(tree, tag="v0.5", message="Release v0.5")
        assert hf_hub.commits_on(REPO) == 2  # the repo's creation commit + the release
        assert [p for m, p in hf_hub.requests if m == "POST" and "/commit/" in p] == [
            f"/api/datasets/{REPO}/commit/main"
        ]
        import json

        manifest = json.loads((tree / "MANIFEST.json").read_text())
        on_tag = _tree_on(hf_hub, "v0.5")
        for path, entry in manifest["files"].items():
            assert on_tag[path] == entry["sha256"]
