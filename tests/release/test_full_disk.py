"""A full disk under `lmsynth release --to <folder>`: no tag on a half-written release, one line, a rerun finishes.

The hub folder lives on a small tmpfs (`tests.disk`) that holds v0.3; v0.5 is released into it with the disk
filled so that the space runs out at several points: writing git's objects, and early, midway and late in
writing the new working folder. Each time: exit 1 with one line, no v0.5 tag, and a working folder that is
still exactly v0.3 (its tree rule holds, `load_dataset` reads it). Then the space is freed and the same
command finishes v0.5. Without the privilege to mount, the same failures are injected at named points.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lmsynth import constants
from lmsynth.release.verify import verify
from lmsynth.testing import write_run_dir
from lmsynth.tree.manifest_json import check_tree
from tests.disk import fill, free_bytes, small_disk
from tests.release.conftest import PASSPHRASE
from tests.release.test_kills import _lmsynth


N = 12
# How much of the v0.5 tree's size is left free, or (without a tmpfs) where the same error is injected.
LEVELS = {
    "objects": (0.0, "publish.locked:ENOSPC"),
    "worktree-early": (1.15, "publish.branch:ENOSPC"),
    "worktree-midway": (1.5, "publish.staged:ENOSPC"),
    "worktree-late": (1.85, "publish.staged:ENOSPC"),
}


@pytest.fixture
def two_releases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Manifests v0.3 (gemma-2) and v0.5 (gemma-2 + gemma-3, cumulative) over small synthetic run folders."""
    monkeypatch.chdir(tmp_path)
    return write_two_releases(tmp_path)


@pytest.fixture(scope="module")
def released_v03(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A hub folder holding v0.3, and the size of the v0.5 tree: made once, from the same project each test has.

    Each test starts from a copy of the hub: releasing v0.3 and sizing v0.5 cost two commands per test.
    """
    root = write_two_releases(tmp_path_factory.mktemp("v03"))
    tree_bytes = _tree_bytes(root)
    first = _release(root, "v0.3", root / "hub")
    assert first.returncode == 0, first.stderr
    return root / "hub", tree_bytes


def write_two_releases(tmp_path: Path) -> Path:
    """The project of `two_releases`, written into `tmp_path`."""
    for version, configs in (("v0.3", ["gemma-2"]), ("v0.5", ["gemma-2", "gemma-3"])):
        data = yaml.safe_load((constants.RELEASE_DIR / f"{version}.yaml").read_text(encoding="utf-8"))
        data["subsets"] = [s for s in data["subsets"] if s["config"] in configs]
        for s in data["subsets"]:
            s.update(records=f"runs/{s['config']}", prepared="runs/prepared", pipelines=[])
        (tmp_path / f"{version}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    for config, shape in (("gemma-2", "v0.3"), ("gemma-3", "v0.5")):
        write_run_dir(
            tmp_path / "runs" / config, N, shape=shape, seed=7, unsafe_n=2, prepared=tmp_path / "runs" / "prepared"
        )
    return tmp_path


def _release(root: Path, version: str, hub: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return _lmsynth(root, "release", version, "--manifest", f"{version}.yaml", "--to", str(hub), kill_at=kill_at)


def _git(hub: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(hub), *args], capture_output=True, text=True, check=True).stdout


def _holds(hub: Path, version: str, config: str, cache: Path) -> None:
    """The working folder is exactly release `version` (tree rule, its MANIFEST.json) and `config` loads."""
    import datasets

    check_tree(hub)
    assert (hub / "MANIFEST.json").read_text(encoding="utf-8") == _git(hub, "show", f"{version}:MANIFEST.json")
    rows = datasets.load_dataset(str(hub), config, split="train", cache_dir=str(cache))
    assert len(rows) > 0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("level", list(LEVELS))
def test_full_disk_never_tags_a_broken_release_and_a_rerun_finishes_it(
    two_releases: Path, released_v03: tuple[Path, int], level: str
) -> None:
    _full_then_freed(two_releases, released_v03, level, mount=True)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("level", ["objects", "worktree-midway"])
def test_injected_enospc_never_tags_a_broken_release(
    two_releases: Path, released_v03: tuple[Path, int], level: str
) -> None:
    # The fallback of the test above where no tmpfs can be mounted: run here too, so it is known to work.
    _full_then_freed(two_releases, released_v03, level, mount=False)


def _full_then_freed(root: Path, released_v03: tuple[Path, int], level: str, *, mount: bool) -> None:
    hub_v03, tree_bytes = released_v03
    size = f"{max(16, 4 * tree_bytes // (1 << 20) + 8)}m"
    with small_disk(root / "disk", size=size) if mount else contextlib.nullcontext() as disk:
        hub = (disk or root) / "hub"
        shutil.copytree(hub_v03, hub, symlinks=True)
        assert _git(hub, "tag", "--list").split() == ["v0.3"] and _git(hub, "status", "--porcelain") == ""
        fraction, point = LEVELS[level]
        if disk is not None:
            filler = fill(disk, leave=int(fraction * tree_bytes))
            failed = _release(root, "v0.5", hub)
        else:
            failed = _release(root, "v0.5", hub, kill_at=point)
        lines = failed.stderr.strip().splitlines()
        assert failed.returncode == 1, failed.stderr
        assert len(lines) == 1 and lines[0].startswith("Error: No space left on device: "), failed.stderr
        assert _git(hub, "tag", "--list").split() == ["v0.3"]
        # Out of space while storing the release (the branch stays) or while writing its working folder aside.
        moved = _git(hub, "rev-parse", "main") != _git(hub, "rev-parse", "v0.3^{commit}")
        assert moved == (level != "objects" or disk is None and point != "publish.locked:ENOSPC"), level
        _holds(hub, "v0.3", "gemma-2", root / "hf-v0.3")
        print(f"\n{level}: {lines[0]}")
        if disk is not None:
            filler.unlink()
            assert free_bytes(disk) > 2 * tree_bytes
        done = _release(root, "v0.5", hub)
        assert done.returncode == 0, done.stderr
        assert _git(hub, "tag", "--list").split() == ["v0.3", "v0.5"]
        assert _git(hub, "status", "--porcelain") == ""
        _holds(hub, "v0.5", "gemma-3", root / "hf-v0.5")
        from pydantic import SecretStr

        verify("v0.5", target=str(hub), passphrase=SecretStr(PASSPHRASE))


def _tree_bytes(root: Path) -> int:
    """Size of the built v0.5 tree (a dry run), to size the disk and the space left free."""
    built = _lmsynth(root, "release", "v0.5", "--manifest", "v0.5.yaml", "--dry-run", "--out", "build")
    assert built.returncode == 0, built.stderr
    return sum(p.stat().st_size for p in (root / "build").rglob("*") if p.is_file())
