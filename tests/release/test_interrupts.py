"""Ctrl-C and SIGTERM during a publish: the one line says whether the release is published.

The process signals itself (a real signal) at the exact point that matters, `LMSYNTH_KILL_AT=<point>:SIGINT`
(`lmsynth.faults`): before the tag nothing is published, after it the release is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsynth.release.verify import verify
from lmsynth.targets.local import LocalTarget
from tests.release.conftest import PASSPHRASE
from tests.release.test_kills import RELEASE, _lmsynth


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("point", "sig", "code", "published"),
    [
        ("publish.locked", "SIGINT", 130, False),
        ("publish.synced", "SIGINT", 130, False),  # the working folder is v0.5, the tag not yet written
        ("publish.tagged", "SIGINT", 130, True),
        ("publish.synced", "SIGTERM", 143, False),
        ("publish.tagged", "SIGTERM", 143, True),
    ],
)
def test_interrupted_publish_says_whether_the_release_is_published(
    small_project: Path, point: str, sig: str, code: int, published: bool
) -> None:
    root = small_project
    stopped = _lmsynth(root, *RELEASE, kill_at=f"{point}:{sig}")
    assert stopped.returncode == code, stopped.stderr
    if published:
        expected = "Error: interrupted after v0.5 was tagged on hub: v0.5 is published"
    else:
        expected = "Error: interrupted before v0.5 was tagged on hub: nothing was published; rerun to publish"
    assert stopped.stderr.strip().splitlines() == [expected], stopped.stderr
    assert LocalTarget(root / "hub").tags() == (["v0.5"] if published else [])
    if published:
        from pydantic import SecretStr

        verify("v0.5", target=str(root / "hub"), passphrase=SecretStr(PASSPHRASE))
    done = _lmsynth(root, *RELEASE)
    assert done.returncode == 0, done.stderr
    assert LocalTarget(root / "hub").tags() == ["v0.5"]


@pytest.mark.timeout(600)
def test_interrupted_publish_of_a_built_tree_says_so(small_project: Path) -> None:
    root = small_project
    built = _lmsynth(root, "release", "v0.5", "--manifest", "v0.5.yaml", "--dry-run", "--out", "build")
    assert built.returncode == 0, built.stderr
    args = ("publish", "build", "--to", "hub", "--tag", "v0.5")
    before = _lmsynth(root, *args, kill_at="publish.branch:SIGINT")
    assert before.returncode == 130
    assert before.stderr.strip().endswith("nothing was published; rerun to publish"), before.stderr
    after = _lmsynth(root, *args, kill_at="publish.tagged:SIGINT")
    assert after.returncode == 130
    assert after.stderr.strip().splitlines() == ["Error: interrupted after v0.5 was tagged on hub: v0.5 is published"]
    assert LocalTarget(root / "hub").tags() == ["v0.5"]
