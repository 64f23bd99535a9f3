"""The HF target against the local Hub stand-in, through the real huggingface_hub and datasets clients."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lmsynth.errors import ChecksumError, HubAuthError, HubRateLimitError, TagConflictError, TargetError
from lmsynth.retry import RetryPolicy
from lmsynth.targets import open_target
from lmsynth.targets.hf import HfTarget
from tests.hub.hf_server import HubState
from tests.hub.trees import CONFIG, write_tree


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

    def test_v06_leaves_v05_loadable_and_unchanged(self, hf_hub: HubState, tmp_path: Path) -> None:
        target = HfTarget(REPO)
        target.publish(write_tree(tmp_path / "v0.5", rows=3, seed="a"), tag="v0.5", message="v0.5")
        before = _tree_on(hf_hub, "v0.5")
        target.publish(write_tree(tmp_path / "v0.6", version="v0.6", rows=4, seed="b"), tag="v0.6", message="v0.6")
        assert _tree_on(hf_hub, "v0.5") == before
        assert _load(REPO, "v0.5") == [f"a-{CONFIG}-{i}" for i in range(3)]
        assert _load(REPO, "v0.6") == [f"b-{CONFIG}-{i}" for i in range(4)]

    def test_files_dropped_from_the_tree_are_deleted_in_the_same_commit(
        self, hf_hub: HubState, tmp_path: Path
    ) -> None:
        target = HfTarget(REPO)
        target.publish(write_tree(tmp_path / "v0.5", configs=(CONFIG, "llama")), tag="v0.5", message="v0.5")
        target.publish(write_tree(tmp_path / "v0.6", version="v0.6", seed="b"), tag="v0.6", message="v0.6")
        assert not any(p.startswith("data/llama/") for p in _tree_on(hf_hub, "v0.6"))
        assert any(p.startswith("data/llama/") for p in _tree_on(hf_hub, "v0.5"))
        assert hf_hub.commits_on(REPO) == 3

    def test_identical_rerelease_makes_no_commit(self, hf_hub: HubState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        first = HfTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        again = HfTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        assert not again.created_commit and again.commit == first.commit and not again.moved_tag
        assert hf_hub.commits_on(REPO) == 2

    def test_tag_on_different_content_is_refused(self, hf_hub: HubState, tmp_path: Path) -> None:
        target = HfTarget(REPO)
        first = target.publish(write_tree(tmp_path / "a"), tag="v0.5", message="v0.5")
        with pytest.raises(TagConflictError) as err:
            target.publish(write_tree(tmp_path / "b", seed="b"), tag="v0.5", message="v0.5 again")
        assert err.value.tag == "v0.5" and "--force" in str(err.value)
        assert hf_hub.repo(REPO).tags["v0.5"] == first.commit
        assert hf_hub.commits_on(REPO) == 2  # refused before committing

    def test_force_moves_the_tag(self, hf_hub: HubState, tmp_path: Path) -> None:
        target = HfTarget(REPO)
        first = target.publish(write_tree(tmp_path / "a"), tag="v0.5", message="v0.5")
        moved = target.publish(write_tree(tmp_path / "b", seed="b"), tag="v0.5", message="v0.5 fix", force=True)
        assert moved.moved_tag and moved.commit != first.commit
        assert hf_hub.repo(REPO).tags["v0.5"] == moved.commit
        assert _load(REPO, "v0.5")[0].startswith("b-")


class TestFailures:
    def test_commit_failing_leaves_no_tag_and_a_rerun_completes(self, hf_hub: HubState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        hf_hub.inject("commit", 500, times=10)
        with pytest.raises(HubRateLimitError) as err:
            HfTarget(REPO, retry=RetryPolicy(attempts=2, base_delay_s=0)).publish(tree, tag="v0.5", message="v0.5")
        assert "HTTP 500" in str(err.value) and "\n" not in str(err.value)
        assert hf_hub.repo(REPO).tags == {}
        hf_hub.faults.clear()
        result = HfTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        assert result.created_commit
        assert _load(REPO, "v0.5") == [f"a-{CONFIG}-{i}" for i in range(5)]

    def test_one_500_mid_upload_is_retried_within_the_publish(self, hf_hub: HubState, tmp_path: Path) -> None:
        hf_hub.inject("commit", 500, times=1)
        result = HfTarget(REPO).publish(write_tree(tmp_path / "v0.5"), tag="v0.5", message="v0.5")
        assert hf_hub.repo(REPO).tags["v0.5"] == result.commit
        commit_posts = [p for m, p in hf_hub.requests if m == "POST" and "/commit/" in p]
        assert len(commit_posts) == 2 and hf_hub.commits_on(REPO) == 2

    def test_failure_after_commit_before_tag_is_completed_without_a_new_commit(
        self, hf_hub: HubState, tmp_path: Path
    ) -> None:
        tree = write_tree(tmp_path / "v0.5")
        hf_hub.inject("tag", 503, times=10)
        with pytest.raises(HubRateLimitError):
            HfTarget(REPO, retry=RetryPolicy(attempts=2, base_delay_s=0)).publish(tree, tag="v0.5", message="v0.5")
        assert hf_hub.repo(REPO).tags == {}
        hf_hub.faults.clear()
        result = HfTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        assert not result.created_commit and hf_hub.commits_on(REPO) == 2
        assert hf_hub.repo(REPO).tags["v0.5"] == result.commit

    def test_429_is_retried_then_reported_with_what_to_do(self, hf_hub: HubState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        hf_hub.inject("commit", 429, times=2)
        assert HfTarget(REPO).publish(tree, tag="v0.5", message="v0.5").created_commit
        hf_hub.inject("refs", 429, times=100)
        with pytest.raises(HubRateLimitError) as err:
            HfTarget(REPO, retry=RetryPolicy(attempts=3, base_delay_s=0)).publish(tree, tag="v0.6", message="x")
        assert str(err.value).startswith(f"hf://{REPO}: ") and "HTTP 429" in str(err.value)
        assert "after 3 attempts" in str(err.value) and "rerun" in str(err.value)

    def test_bad_token_is_a_one_line_auth_error_without_the_token(
        self, hf_hub: HubState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        secret = "hf_planted_secret_value_987"
        hf_hub.require_tokens("hf_the_only_valid_token_000")
        monkeypatch.setenv("HF_TOKEN", secret)
        caplog.set_level(logging.DEBUG)
        with pytest.raises(HubAuthError) as err:
            HfTarget(REPO).publish(write_tree(tmp_path / "v0.5"), tag="v0.5", message="v0.5")
        text = str(err.value)
        assert "\n" not in text and "HTTP 401" in text and "write access" in text
        assert secret not in text and secret not in caplog.text and secret not in repr(err.value)
        assert f"Bearer {secret}" in hf_hub.seen_authorization  # the token did reach the hub, only there

    def test_missing_repo_on_read_is_none_not_an_error(self, hf_hub: HubState) -> None:
        assert HfTarget("org/absent").fetch_file("MANIFEST.json", revision="v0.5") is None

    def test_tree_not_matching_its_manifest_is_refused_before_any_request(
        self, hf_hub: HubState, tmp_path: Path
    ) -> None:
        tree = write_tree(tmp_path / "v0.5")
        (tree / "data" / CONFIG / "train-00000-of-00001.parquet").write_bytes(b"changed")
        with pytest.raises(ChecksumError) as err:
            HfTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        assert "train-00000-of-00001.parquet" in str(err.value)
        assert hf_hub.requests == []

    def test_malformed_uri(self) -> None:
        with pytest.raises(TargetError, match="hf://ORG/NAME"):
            open_target("hf://just-a-name")


class TestRead:
    def test_fetch_file_and_download_the_tag(self, hf_hub: HubState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        target = HfTarget(REPO)
        target.publish(tree, tag="v0.5", message="v0.5")
        assert target.fetch_file("MANIFEST.json", revision="v0.5") == (tree / "MANIFEST.json").read_bytes()
        assert target.fetch_file("MANIFEST.json", revision="v9.9") is None
        assert target.fetch_file("nope.txt", revision="v0.5") is None
        out = target.download("v0.5", tmp_path / "out")
        from lmsynth.tree.manifest_json import check_tree, tree_files

        assert tree_files(out) == tree_files(tree)
        check_tree(out)  # every file matches MANIFEST.json
        assert target.load_dataset_args("v0.5") == (REPO, {"revision": "v0.5"})
