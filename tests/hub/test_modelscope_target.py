"""The ModelScope target against the local stand-in, through the real `modelscope` client."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmsynth.errors import HubAuthError, HubRateLimitError, TagConflictError, TargetError
from lmsynth.retry import RetryPolicy
from lmsynth.targets import open_target
from lmsynth.targets.modelscope import HF_CARD_COPY, ModelScopeTarget, modelscope_card
from tests.hub.ms_server import MsState
from tests.hub.trees import write_tree


pytestmark = pytest.mark.hub

REPO = "org/synth"


def _tagged(state: MsState, tag: str) -> dict[str, str]:
    repo = state.repo(REPO)
    return {p: sha for p, (sha, _) in repo.commits[repo.tags[tag]].items()}


class TestModelScope:
    def test_create_upload_tag_list_download_round_trip(self, ms_hub: MsState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        target = open_target(f"ms://{REPO}")
        result = target.publish(tree, tag="v0.5", message="Release v0.5")
        # The tag is on the commit the upload created (the revisions listing names no commits).
        assert result.created_commit and ms_hub.repo(REPO).tags["v0.5"] == result.commit
        assert result.commit in ms_hub.repo(REPO).commits
        assert ms_hub.commits_on(REPO) == 2  # creation + one upload commit
        assert ms_hub.repo(REPO).visibility == 5
        out = target.download("v0.5", tmp_path / "out")
        from lmsynth.tree.manifest_json import check_tree, tree_files

        assert tree_files(out) == tree_files(tree)
        check_tree(out)  # every file, README.md included, matches MANIFEST.json again

    def test_card_uses_modelscope_vocabulary(self, ms_hub: MsState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        ModelScopeTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        card = ModelScopeTarget(REPO).fetch_file("README.md", revision="v0.5").decode()
        meta = yaml.safe_load(card.split("---\n")[1])
        assert meta["license"] == "Other" and meta["license_names"] == ["apache-2.0"]
        assert meta["configs"][0]["config_name"] == "gemma3"
        hf = ModelScopeTarget(REPO).fetch_file(HF_CARD_COPY, revision="v0.5")
        assert hf == (tree / "README.md").read_bytes()
        assert card == modelscope_card(tree)

    def test_identical_rerelease_makes_no_commit_and_conflict_is_refused(
        self, ms_hub: MsState, tmp_path: Path
    ) -> None:
        tree = write_tree(tmp_path / "v0.5")
        ModelScopeTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        again = ModelScopeTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        assert not again.created_commit and ms_hub.commits_on(REPO) == 2
        with pytest.raises(TagConflictError):
            ModelScopeTarget(REPO).publish(write_tree(tmp_path / "b", seed="b"), tag="v0.5", message="x")

    def test_v06_leaves_v05_unchanged(self, ms_hub: MsState, tmp_path: Path) -> None:
        ModelScopeTarget(REPO).publish(write_tree(tmp_path / "a"), tag="v0.5", message="v0.5")
        before = _tagged(ms_hub, "v0.5")
        ModelScopeTarget(REPO).publish(write_tree(tmp_path / "b", version="v0.6", seed="b"), tag="v0.6", message="6")
        assert _tagged(ms_hub, "v0.5") == before != _tagged(ms_hub, "v0.6")

    def test_one_500_on_the_commit_is_retried(self, ms_hub: MsState, tmp_path: Path) -> None:
        ms_hub.inject("commit", 500, times=1)
        result = ModelScopeTarget(REPO).publish(write_tree(tmp_path / "v0.5"), tag="v0.5", message="v0.5")
        assert ms_hub.repo(REPO).tags["v0.5"] == result.commit
        assert len([p for m, p in ms_hub.requests if m == "POST" and "/commit/" in p]) >= 2

    def test_failure_before_the_tag_leaves_no_tag_and_rerun_completes(self, ms_hub: MsState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        ms_hub.inject("tag", 503, times=50)
        with pytest.raises(HubRateLimitError) as err:
            ModelScopeTarget(REPO, retry=RetryPolicy(attempts=2, base_delay_s=0)).publish(
                tree, tag="v0.5", message="x"
            )
        assert "\n" not in str(err.value) and "HTTP 503" in str(err.value)
        assert ms_hub.repo(REPO).tags == {}
        ms_hub.faults.clear()
        rerun = ModelScopeTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        assert not rerun.created_commit and ms_hub.commits_on(REPO) == 2
        # No upload this time, so no commit id from it: `master` was checked to hold the tree, then tagged.
        assert ms_hub.repo(REPO).tags["v0.5"] == ms_hub.repo(REPO).branches["master"] and rerun.commit is None

    def test_bad_token_is_one_line_without_the_token(
        self, ms_hub: MsState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ms_hub.require_tokens("ms_only_valid")
        monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms_planted_secret_4242")
        with pytest.raises(HubAuthError) as err:
            ModelScopeTarget(REPO).publish(write_tree(tmp_path / "v0.5"), tag="v0.5", message="v0.5")
        assert "ms_planted_secret_4242" not in str(err.value) and "\n" not in str(err.value)

    def test_stale_files_are_deleted_in_the_same_commit(self, ms_hub: MsState, tmp_path: Path) -> None:
        ModelScopeTarget(REPO).publish(write_tree(tmp_path / "a", rows=5), tag="v0.4", message="v0.4")
        repo = ms_hub.repo(REPO)
        stale = "data/gemma3/train-00000-of-00002.parquet"
        head = repo.commits[repo.branches["master"]]
        repo.commits["stale"] = {**head, stale: head["data/gemma3/train-00000-of-00001.parquet"]}
        repo.branches["master"] = "stale"
        before = ms_hub.commits_on(REPO)
        tree = write_tree(tmp_path / "b", seed="b")
        result = ModelScopeTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        assert ms_hub.commits_on(REPO) == before + 1  # uploads and deletion: one commit
        assert stale not in _tagged(ms_hub, "v0.5") and "data/gemma3/train-00000-of-00001.parquet" in _tagged(
            ms_hub, "v0.5"
        )
        assert repo.tags["v0.5"] == result.commit

    def test_more_operations_than_one_commit_is_refused_unless_forced(
        self, ms_hub: MsState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import modelscope_hub.constants

        ModelScopeTarget(REPO).publish(write_tree(tmp_path / "a", configs=("x", "y")), tag="v0.4", message="v0.4")
        monkeypatch.setattr(modelscope_hub.constants, "UPLOAD_COMMIT_BATCH_MAX_OPERATIONS", 4)
        tree = write_tree(tmp_path / "b", seed="b")
        with pytest.raises(TargetError, match="--force") as err:
            ModelScopeTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        assert "\n" not in str(err.value) and "v0.5" not in ms_hub.repo(REPO).tags
        ModelScopeTarget(REPO).publish(tree, tag="v0.5", message="v0.5", force=True)
        assert not any(p.startswith(("data/x/", "data/y/")) for p in _tagged(ms_hub, "v0.5"))

    def test_listing_with_folder_entries_downloads_with_the_sdk(self, ms_hub: MsState, tmp_path: Path) -> None:
        tree = write_tree(tmp_path / "v0.5")
        ModelScopeTarget(REPO).publish(tree, tag="v0.5", message="v0.5")
        from modelscope.hub.api import HubApi

        listing = HubApi()._api.list_repo_files(REPO, "dataset", revision="v0.5")
        assert {"data", "data/gemma3"} <= {f.path for f in listing if f.type == "tree"}
        out = ModelScopeTarget(REPO).download("v0.5", tmp_path / "out")
        from lmsynth.tree.manifest_json import check_tree

        check_tree(out)
        assert not (out / "data").is_file()


def test_verify_a_modelscope_release_by_its_download(project, ms_hub: MsState) -> None:  # noqa: ANN001
    from lmsynth.release.build import build_release
    from lmsynth.release.verify import verify
    from tests.release.conftest import N

    res = build_release("v0.5", manifest_path=project.manifest, target=f"ms://{REPO}", passphrase=project.passphrase)
    assert ms_hub.repo(REPO).tags["v0.5"] == res.commit
    ver = verify("v0.5", target=f"ms://{REPO}", passphrase=project.passphrase)
    assert ver.rows == {"llama-3.1": N, "gemma-2": N, "gemma-3": N} and ver.gated_checked == 6
