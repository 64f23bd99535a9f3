"""`kill -9` at named points of `lmsynth release`, and two releases at once into the same local hub.

Each killed command is a real subprocess that SIGKILLs itself at a kill point (`lmsynth.faults`), so no
`finally` runs. The checks: what the kill left (gated plaintext in the scratch folder, a GnuPG agent), that
the next command removes all of it, and that a rerun finishes the release so `verify` passes. The gated
instructions are sorted in memory and streamed into gpg: no kill point finds their plaintext on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmsynth.release.verify import verify
from lmsynth.targets.local import LocalTarget
from tests.release.conftest import PASSPHRASE


_CLI = [sys.executable, "-m", "lmsynth"]
RELEASE = ("release", "v0.5", "--manifest", "v0.5.yaml", "--to", "hub")
TIMEOUT = 300


def _env(root: Path, kill_at: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "LMSYNTH_CACHE": str(root / "cache"),
        "TMPDIR": str(root / "systmp"),
        "LMSYNTH_PASSPHRASE": PASSPHRASE,
    }
    env.pop("LMSYNTH_KILL_AT", None)
    if kill_at:
        env["LMSYNTH_KILL_AT"] = kill_at
    return env


def _lmsynth(root: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    (root / "systmp").mkdir(exist_ok=True)
    return subprocess.run(
        [*_CLI, *args],
        cwd=root,
        env=_env(root, kill_at),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _agents(root: Path) -> list[int]:
    """gpg-agent processes started for GnuPG homes under this test's temporary folder."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "gpg-agent" in cmd and str(root / "systmp") in cmd:
            pids.append(int(proc.name))
    return pids


def _leftovers(root: Path) -> dict[str, list[str]]:
    """Everything a command may leave: scratch folders, system temp entries, gpg agents."""
    scratch = root / "cache" / "tmp"
    return {
        "scratch": sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*")) if scratch.is_dir() else [],
        "systmp": sorted(p.name for p in (root / "systmp").iterdir()) if (root / "systmp").is_dir() else [],
        "agents": [str(p) for p in _agents(root)],
    }


def _assert_released(root: Path) -> None:
    hub = LocalTarget(root / "hub")
    assert hub.tags() == ["v0.5"]
    git = ["git", "-C", str(root / "hub")]
    assert subprocess.run([*git, "rev-parse", "v0.5^{commit}"], capture_output=True, text=True).stdout == (
        subprocess.run([*git, "rev-parse", "main"], capture_output=True, text=True).stdout
    )
    assert subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout == ""
    from pydantic import SecretStr

    verify("v0.5", target=str(root / "hub"), passphrase=SecretStr(PASSPHRASE))


BUILD_POINTS = ["release.staging", "crypto.streaming", "release.encrypted@1", "release.encrypted@2", "release.planned"]
PUBLISH_POINTS = [
    "publish.locked",
    "publish.committed",
    "publish.branch",
    "publish.staged",
    "publish.swapping",
    "publish.synced",
    "publish.tagged",
]


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_kill_during_build_leaves_nothing_after_the_next_command(small_project: Path, point: str) -> None:
    root = small_project
    killed = _lmsynth(root, *RELEASE, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = _leftovers(root)
    assert left["scratch"], "the kill left no scratch folder: the kill point was not reached"
    assert not any(p.endswith((".jsonl", ".jsonl.gz")) or ".run" in p for p in left["scratch"]), left
    assert not any("lmsynth" in name for name in left["systmp"]), left  # nothing of ours outside the scratch
    # Any later command cleans what the killed one left (its lock died with it), GnuPG agents included.
    assert _lmsynth(root, "version").returncode == 0
    assert _leftovers(root) == {"scratch": [], "systmp": [], "agents": []}
    done = _lmsynth(root, *RELEASE)
    assert done.returncode == 0, done.stderr
    assert _leftovers(root) == {"scratch": [], "systmp": [], "agents": []}
    _assert_released(root)


@pytest.mark.parametrize("point", PUBLISH_POINTS)
def test_kill_during_publish_is_repaired_by_a_rerun(small_project: Path, point: str) -> None:
    root = small_project
    killed = _lmsynth(root, *RELEASE, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = _lmsynth(root, *RELEASE)
    assert done.returncode == 0, done.stderr
    assert "Released v0.5" in done.stdout or "Unchanged v0.5" in done.stdout
    assert _leftovers(root) == {"scratch": [], "systmp": [], "agents": []}
    _assert_released(root)
    assert LocalTarget(root / "hub").commit_count() == 1


def test_kill_while_moving_a_tag_is_finished_by_the_forced_rerun(small_project: Path) -> None:
    root = small_project
    assert _lmsynth(root, *RELEASE).returncode == 0
    shard = next((root / "runs" / "gemma-3" / "records").glob("*.jsonl"))
    shard.write_text(
        shard.read_text(encoding="utf-8").replace(
            '"is_template_instruction": null', '"is_template_instruction": "x"', 1
        )
    )
    killed = _lmsynth(root, *RELEASE, "--force", kill_at="publish.branch")  # branch moved, tag not yet
    assert killed.returncode == -signal.SIGKILL
    refused = _lmsynth(root, *RELEASE)
    assert refused.returncode == 1 and "already exists with different content" in refused.stderr
    done = _lmsynth(root, *RELEASE, "--force")
    assert done.returncode == 0, done.stderr
    _assert_released(root)
    assert LocalTarget(root / "hub").commit_count() == 2


def test_git_lock_files_and_a_half_updated_work_tree_left_by_a_kill_inside_git_are_repaired(
    small_project: Path,
) -> None:
    # git itself cannot be stopped at a chosen point: plant what a kill inside `git reset` / `git tag` leaves.
    root = small_project
    assert _lmsynth(root, *RELEASE).returncode == 0
    hub = root / "hub"
    (hub / ".git" / "index.lock").write_text("")
    (hub / ".git" / "refs" / "tags" / "v0.5.lock").write_text("")
    (hub / "README.md").write_text("half written")
    done = _lmsynth(root, *RELEASE)
    assert done.returncode == 0, done.stderr
    assert not (hub / ".git" / "index.lock").exists() and not (hub / ".git" / "refs" / "tags" / "v0.5.lock").exists()
    _assert_released(root)


def test_two_releases_into_the_same_hub_at_once_both_succeed(small_project: Path) -> None:
    root = small_project
    (root / "systmp").mkdir(exist_ok=True)
    procs = [
        subprocess.Popen(
            [*_CLI, *RELEASE],
            cwd=root,
            env=_env(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    deadline = time.monotonic() + TIMEOUT
    for p in procs:
        out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        assert p.returncode == 0, err
        outs.append(out)
    assert sorted(o.split("\n")[0].split()[1] for o in outs) == ["Released", "Unchanged"], outs
    _assert_released(root)
    assert LocalTarget(root / "hub").commit_count() == 1
    assert _leftovers(root) == {"scratch": [], "systmp": [], "agents": []}
