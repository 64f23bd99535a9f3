"""The local git target, the reference `Target`: one commit and annotated tag per release, no-op, conflict."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lmsynth.errors import TagConflictError, TargetError
from lmsynth.targets import Target, open_target
from lmsynth.targets.local import LocalTarget


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    a = _tree(tmp_path / "a", {"README.md": "a\n", "data/x/train-00000-of-00001.parquet": "1", "old.txt": "gone"})
    b = _tree(tmp_path / "b", {"README.md": "b\n", "data/x/train-00000-of-00001.parquet": "2"})
    return a, b


class TestLocalTarget:
    def test_is_a_target_and_opened_by_uri(self, tmp_path: Path) -> None:
        for uri in (str(tmp_path / "hub"), f"file://{tmp_path / 'hub'}"):
            t = open_target(uri)
            assert isinstance(t, LocalTarget) and isinstance(t, Target) and t.path == tmp_path / "hub"

    def test_publish_makes_one_commit_and_an_annotated_tag(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        hub = LocalTarget(tmp_path / "hub")
        res = hub.publish(trees[0], tag="v0.1", message="Release v0.1")
        assert res.created_commit and res.commit == _git(hub.path, "rev-parse", "HEAD")
        assert _git(hub.path, "cat-file", "-t", "v0.1") == "tag"
        assert (
            _git(hub.path, "log", "-1", "--format=%an <%ae> %aI")
            == "lmsynth <lmsynth@localhost> 2024-01-01T00:00:00+00:00"
        )
        assert (hub.path / "README.md").read_text() == "a\n"
        assert _git(hub.path, "status", "--porcelain") == ""

    def test_same_tree_again_is_a_no_op(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        hub = LocalTarget(tmp_path / "hub")
        first = hub.publish(trees[0], tag="v0.1", message="m")
        again = hub.publish(trees[0], tag="v0.1", message="m")
        assert not again.created_commit and again.commit == first.commit and hub.commit_count() == 1

    def test_next_version_replaces_the_work_tree(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        hub = LocalTarget(tmp_path / "hub")
        hub.publish(trees[0], tag="v0.1", message="m")
        hub.publish(trees[1], tag="v0.3", message="m")
        assert hub.tags() == ["v0.1", "v0.3"] and hub.commit_count() == 2
        assert not (hub.path / "old.txt").exists() and (hub.path / "README.md").read_text() == "b\n"
        assert hub.fetch_file("old.txt", revision="v0.1") == b"gone"
        assert hub.fetch_file("old.txt", revision="v0.3") is None
        assert hub.fetch_file("README.md", revision="v9.9") is None

    def test_tag_conflict_refused_unless_forced(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        hub = LocalTarget(tmp_path / "hub")
        first = hub.publish(trees[0], tag="v0.1", message="m")
        with pytest.raises(TagConflictError) as info:
            hub.publish(trees[1], tag="v0.1", message="m")
        assert info.value.tag == "v0.1" and _git(hub.path, "rev-parse", "v0.1^{commit}") == first.commit
        assert (hub.path / "README.md").read_text() == "a\n"
        moved = hub.publish(trees[1], tag="v0.1", message="m", force=True)
        assert moved.moved_tag and _git(hub.path, "rev-parse", "v0.1^{commit}") == moved.commit != first.commit

    def test_commits_are_reproducible(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        one = LocalTarget(tmp_path / "one").publish(trees[0], tag="v0.1", message="m")
        two = LocalTarget(tmp_path / "two").publish(trees[0], tag="v0.1", message="m")
        assert one.commit == two.commit

    def test_download_and_load_dataset_args_for_an_older_tag(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        hub = LocalTarget(tmp_path / "hub")
        hub.publish(trees[0], tag="v0.1", message="m")
        hub.publish(trees[1], tag="v0.3", message="m")
        dest = hub.download("v0.1", tmp_path / "dl")
        assert (dest / "old.txt").read_text() == "gone" and not (dest / ".git").exists()
        path, kwargs = hub.load_dataset_args("v0.3")
        assert path == str(hub.path) and "cache_dir" in kwargs
        old_path, _ = hub.load_dataset_args("v0.1")
        assert old_path != str(hub.path) and (Path(old_path) / "old.txt").read_text() == "gone"
        with pytest.raises(TargetError, match="no release tagged"):
            hub.download("v7.0", tmp_path / "none")

    def test_refuses_a_non_empty_folder_that_is_not_a_repository(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        (tmp_path / "hub").mkdir()
        (tmp_path / "hub" / "notes.txt").write_text("mine")
        with pytest.raises(TargetError, match="not a git repository"):
            LocalTarget(tmp_path / "hub").publish(trees[0], tag="v0.1", message="m")
        assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["notes.txt"]


class TestAbsentOrUnreadable:
    """`fetch_file` answers None only for what git says is absent; a repository it cannot read is an error."""

    def test_absent_folder_revision_and_file(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        hub = LocalTarget(tmp_path / "hub")
        assert hub.fetch_file("README.md", revision="v0.1") is None  # no repository yet
        hub.publish(trees[0], tag="v0.1", message="Release v0.1")
        assert hub.fetch_file("README.md", revision="v0.1") == b"a\n"
        assert hub.fetch_file("README.md", revision="v9.9") is None
        assert hub.fetch_file("nope.txt", revision="v0.1") is None

    def test_a_lost_object_is_an_error_not_an_absent_file(self, tmp_path: Path, trees) -> None:  # noqa: ANN001
        hub = LocalTarget(tmp_path / "hub")
        hub.publish(trees[0], tag="v0.1", message="Release v0.1")
        blob = _git(hub.path, "rev-parse", "v0.1:README.md")
        (hub.path / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
        with pytest.raises(TargetError, match="read a file of the release") as e:
            hub.fetch_file("README.md", revision="v0.1")
        assert "\n" not in str(e.value) and "--force" not in str(e.value)
