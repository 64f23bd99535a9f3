"""The local target: a folder that is a real git repository, one commit and one annotated tag per release.

This is the reference implementation of the `Target` protocol. A publish builds the new commit with git
plumbing first (a private index, `write-tree`, `commit-tree`) without touching the folder; only then do
the branch and the tag move and the work tree follow. So a failure leaves the previous release intact,
and the tag either points at a complete tree or does not exist.

Commits are reproducible: a fixed author/committer identity and date, no user or system git config
(`GIT_CONFIG_GLOBAL=/dev/null`, `GIT_CONFIG_NOSYSTEM=1`), so the same trees give the same commit ids.
Publishing a tree identical to the tagged one is a no-op.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from lmsynth import constants
from lmsynth.errors import TagConflictError, TargetError
from lmsynth.targets.base import PublishResult


log = logging.getLogger(__name__)

BRANCH = "main"
IDENTITY = {"name": "lmsynth", "email": "lmsynth@localhost"}
# A fixed date: commit ids depend only on the trees and messages.
FIXED_DATE = "2024-01-01T00:00:00+0000"


class LocalTarget:
    """A git-backed folder holding tagged release trees; `load_dataset(folder, config)` reads its HEAD."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.uri = str(path)

    # -- Target protocol ------------------------------------------------------------------------------

    def publish(self, tree: Path, *, tag: str, message: str, force: bool = False) -> PublishResult:
        """Make `tree` the content of the folder in one commit tagged `tag` (no-op when identical).

        Raises:
            TagConflictError: `tag` exists on a different tree and `force` is off.
            TargetError: the folder is not usable as a git repository, or git failed.
        """
        tree = Path(tree)
        if not tag:
            raise TargetError(self.uri, "`tag` can't be empty")
        if not tree.is_dir():
            raise TargetError(self.uri, f"release tree {tree} is not a folder")
        self._ensure_repo()
        # 1. The tree object of the release, via a private index over the release folder.
        new_tree = self._tree_of(tree)
        head = self._rev(f"refs/heads/{BRANCH}")
        tagged = self._rev(f"refs/tags/{tag}^{{commit}}")
        # 2. Same content under the same tag: nothing to do.
        if tagged is not None and self._rev(f"{tagged}^{{tree}}") == new_tree:
            log.info("%s: %s already holds this tree", self.uri, tag)
            self._sync_worktree()
            return PublishResult(target=self.uri, tag=tag, commit=tagged, created_commit=False)
        if tagged is not None and not force:
            raise TagConflictError(self.uri, tag)
        # 3. One commit on the branch (none when HEAD already holds the tree), then the tag.
        if head is not None and self._rev(f"{head}^{{tree}}") == new_tree:
            commit, created = head, False
        else:
            args = ["commit-tree", new_tree, "-m", message] + (["-p", head] if head else [])
            commit, created = self._git(*args).strip(), True
            self._git("update-ref", f"refs/heads/{BRANCH}", commit, *([head] if head else []))
        self._git("tag", "-a", *(["-f"] if tagged else []), tag, commit, "-m", message)
        self._sync_worktree()
        return PublishResult(target=self.uri, tag=tag, commit=commit, created_commit=created, moved_tag=bool(tagged))

    def fetch_file(self, path: str, *, revision: str) -> bytes | None:
        """One file of the tree at `revision`, or None when the repository, revision or file is absent."""
        if not (self.path / ".git").is_dir():
            return None
        try:
            return self._git_bytes("show", f"{revision}:{path}")
        except TargetError:
            return None

    def download(self, tag: str, dest: Path) -> Path:
        """Extract the tree tagged `tag` into `dest` (via `git archive`)."""
        dest = Path(dest)
        if self._rev(f"refs/tags/{tag}^{{commit}}") is None:
            raise TargetError(self.uri, f"no release tagged `{tag}`")
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as tmp:
            proc = subprocess.run(
                ["git", "archive", "--format=tar", tag],
                cwd=self.path,
                env=_git_env(),
                stdout=tmp,
                stderr=subprocess.PIPE,
            )
            if proc.returncode != 0:
                raise TargetError(self.uri, f"git archive {tag} failed: {_last_line(proc.stderr)}")
            tmp.seek(0)
            with tarfile.open(fileobj=tmp) as tar:
                tar.extractall(dest, filter="data")
        return dest

    def load_dataset_args(self, tag: str) -> tuple[str, dict]:
        """The folder itself when `tag` is its checked-out HEAD, else a cached checkout of `tag`.

        `datasets` keys its cache of a local folder on the folder name and the config, not on the files'
        content, so a re-released folder would load stale rows: the kwargs carry a `cache_dir` per tree.
        """
        commit = self._rev(f"refs/tags/{tag}^{{commit}}")
        if commit is None:
            raise TargetError(self.uri, f"no release tagged `{tag}`")
        tree_id = self._rev(f"{commit}^{{tree}}") or commit
        kwargs = {"cache_dir": str(constants.CACHE_DIR / "datasets" / tree_id[:16])}
        if commit == self._rev("HEAD") and not self._git("status", "--porcelain", "--untracked-files=no").strip():
            return str(self.path), kwargs
        dest = constants.CACHE_DIR / "checkouts" / f"{self.path.name}-{tag}-{commit[:12]}"
        if not dest.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".checkout-", dir=_mkdir(dest.parent)))
            try:
                self.download(tag, tmp)
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return str(dest), kwargs

    # -- Extras -----------------------------------------------------------------------------------------

    def tags(self) -> list[str]:
        """Release tags, sorted."""
        if not (self.path / ".git").is_dir():
            return []
        return sorted(t for t in self._git("tag", "--list").split() if t)

    def commit_count(self) -> int:
        """Commits on the release branch (0 before the first release)."""
        if self._rev(f"refs/heads/{BRANCH}") is None:
            return 0
        return int(self._git("rev-list", "--count", BRANCH).strip())

    # Private helpers

    def _ensure_repo(self) -> None:
        if (self.path / ".git").is_dir():
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise TargetError(
                self.uri, "exists, is not empty and is not a git repository; refusing to publish into it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "-b", BRANCH)

    def _tree_of(self, tree: Path) -> str:
        with tempfile.TemporaryDirectory(prefix="lmsynth-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_WORK_TREE": str(tree.resolve())}
            self._git("add", "-A", "--force", ".", extra_env=env, cwd=tree)
            return self._git("write-tree", extra_env=env, cwd=tree).strip()

    def _sync_worktree(self) -> None:
        """Make the folder's files exactly the branch's tree (tracked files only; untracked ones stay)."""
        if self._rev(f"refs/heads/{BRANCH}") is not None:
            self._git("symbolic-ref", "HEAD", f"refs/heads/{BRANCH}")
            self._git("reset", "-q", "--hard", BRANCH)

    def _rev(self, rev: str) -> str | None:
        proc = subprocess.run(
            ["git", "rev-parse", "-q", "--verify", rev], cwd=self.path, env=_git_env(), capture_output=True, text=True
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    def _git(self, *args: str, extra_env: dict | None = None, cwd: Path | None = None) -> str:
        return self._git_bytes(*args, extra_env=extra_env, cwd=cwd).decode("utf-8", errors="replace")

    def _git_bytes(self, *args: str, extra_env: dict | None = None, cwd: Path | None = None) -> bytes:
        env = _git_env()
        if extra_env:
            env.update(extra_env)
            env["GIT_DIR"] = str((self.path / ".git").resolve())
        proc = subprocess.run(["git", *args], cwd=cwd or self.path, env=env, capture_output=True)
        if proc.returncode != 0:
            raise TargetError(self.uri, f"git {args[0]} failed: {_last_line(proc.stderr)}")
        return proc.stdout


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME=IDENTITY["name"],
        GIT_AUTHOR_EMAIL=IDENTITY["email"],
        GIT_COMMITTER_NAME=IDENTITY["name"],
        GIT_COMMITTER_EMAIL=IDENTITY["email"],
        GIT_AUTHOR_DATE=FIXED_DATE,
        GIT_COMMITTER_DATE=FIXED_DATE,
        GIT_TERMINAL_PROMPT="0",
    )
    return env


def _last_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
