"""The local target: a folder that is a real git repository, one commit and one annotated tag per release.

This is the reference implementation of the `Target` protocol. A publish builds the new commit with git
plumbing first (a private index, `write-tree`, `commit-tree`) without touching the folder, then moves the
branch, then writes the new working folder aside (`.git/lmsynth/next/`, same file system) and swaps it in
by renames, and tags last. So a failure at any point (a full disk included) leaves the previous release's
working folder whole and loadable and no new tag; the tag only ever names a release whose working folder
is complete. A kill in the middle of the swap (a few renames) is finished by the next publish: the swap
is journalled (`.git/lmsynth/swap.json`) before the first rename.

A publish holds an exclusive lock on the folder (`flock` on the folder itself, so no lock file is left
behind) from the first git command to the tag and the work tree, so two releases into the same folder run
one after the other. The lock also makes whatever a killed publish left safe to repair: git's own stale
`*.lock` files are removed, a half-made repository is re-initialised, a moved branch without its tag gets
the tag, and the work tree is reset to the branch.

Commits are reproducible: a fixed author/committer identity and date, no user or system git config
(`GIT_CONFIG_GLOBAL=/dev/null`, `GIT_CONFIG_NOSYSTEM=1`), so the same trees give the same commit ids.
Publishing a tree identical to the tagged one is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lmsynth import constants, locks
from lmsynth.errors import DiskFullError, TagConflictError, TargetError
from lmsynth.faults import kill_point
from lmsynth.io import no_space_left, write_text
from lmsynth.scratch import scratch_dir
from lmsynth.targets.base import CardLinks, PublishResult, Target, note_tagged, note_untagged


log = logging.getLogger(__name__)

BRANCH = "main"
IDENTITY = {"name": "lmsynth", "email": "lmsynth@localhost"}
# A fixed date: commit ids depend only on the trees and messages.
FIXED_DATE = "2024-01-01T00:00:00+0000"


class LocalTarget(Target):
    """A git-backed folder holding tagged release trees; `load_dataset(folder, config)` reads its HEAD.

    Abilities: a lock (`lock`), a working folder (`working_folder`); it is private to its owner already.
    """

    can_make_private = True

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
        note_untagged(self.uri, tag)
        with self.lock():
            kill_point("publish.locked")
            self._ensure_repo()
            # 1. The tree object of the release, via a private index over the release folder.
            new_tree = self._tree_of(tree)
            head = self._rev(f"refs/heads/{BRANCH}")
            tagged = self._rev(f"refs/tags/{tag}^{{commit}}")
            # 2. Same content under the same tag: nothing to do but repair the work tree.
            if tagged is not None and self._rev(f"{tagged}^{{tree}}") == new_tree:
                log.info("%s: %s already holds this tree", self.uri, tag)
                note_tagged(self.uri, tag)
                self._sync_worktree()
                return PublishResult(target=self.uri, tag=tag, commit=tagged, created_commit=False)
            if tagged is not None and not force:
                raise TagConflictError(self.uri, tag)
            # 3. One commit on the branch (none when HEAD already holds the tree: a rerun after a kill between
            #    the branch and the tag), then the tag, then the work tree.
            if head is not None and self._rev(f"{head}^{{tree}}") == new_tree:
                commit, created = head, False
            else:
                # A release commit a killed publish left untagged is replaced, not built upon.
                base = self._rev(f"{head}^") if head and self._is_unfinished(head, message) else head
                args = ["commit-tree", new_tree, "-m", message] + (["-p", base] if base else [])
                commit, created = self._git(*args).strip(), True
                kill_point("publish.committed")
                self._git("update-ref", f"refs/heads/{BRANCH}", commit, *([head] if head else []))
            kill_point("publish.branch")
            # 4. The working folder, built aside and swapped in; the tag is the last act.
            self._sync_worktree()
            kill_point("publish.synced")
            self._git("tag", "-a", *(["-f"] if tagged else []), tag, commit, "-m", message)
            note_tagged(self.uri, tag)
            kill_point("publish.tagged")
        return PublishResult(target=self.uri, tag=tag, commit=commit, created_commit=created, moved_tag=bool(tagged))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock (waiting for another publish); re-entrant within a process.

        Raises:
            TargetError: the path is a file, or the folder cannot be created.
        """
        key = str(self.path.resolve())
        held = _HELD.get(key)
        if held is not None:
            _HELD[key] = (held[0], held[1] + 1)
        else:
            _HELD[key] = (self._acquire(), 1)
        try:
            yield
        finally:
            fd, count = _HELD[key]
            if count > 1:
                _HELD[key] = (fd, count - 1)
            else:
                del _HELD[key]
                # A folder this failed release created and left empty goes, so nothing is left behind.
                with contextlib.suppress(OSError):
                    if not any(self.path.iterdir()):
                        self.path.rmdir()
                os.close(fd)  # releases the lock

    def _acquire(self) -> int:
        """Lock the folder (created if missing); retry when a holder removed it while we waited."""
        if self.path.exists() and not self.path.is_dir():
            raise TargetError(self.uri, "is a file, not a folder; give a folder (or hf://ORG/NAME, ms://ORG/NAME)")
        try:
            return locks.hold(
                self.path,
                folder=True,
                on_wait=lambda: log.warning("%s: another release is publishing here; waiting for it", self.uri),
            )
        except OSError as e:
            raise TargetError(self.uri, f"cannot create the folder: {e.strerror or e}") from None

    def working_folder(self, tag: str) -> Path | None:
        """The folder itself when its branch holds `tag`: what `load_dataset(folder, config)` then reads."""
        self._require_repo()
        commit = self._rev(f"refs/tags/{tag}^{{commit}}")
        return self.path if commit is not None and commit == self._rev(f"refs/heads/{BRANCH}") else None

    def fetch_file(self, path: str, *, revision: str) -> bytes | None:
        """One file of the tree at `revision`, or None when the repository, revision or file is absent.

        Absent is what git says (no `.git`, no such revision, no such path in its tree); a repository git cannot
        read (permissions, corruption) raises `TargetError` instead.
        """
        if not (self.path / ".git").is_dir():
            return None
        self._git("rev-parse", "--git-dir")  # the repository itself must be readable
        commit = self._rev(f"{revision}^{{commit}}")
        if commit is None or not self._git("ls-tree", "--name-only", commit, "--", path).strip():
            return None
        return self._git_bytes("show", f"{commit}:{path}")

    def download(self, tag: str, dest: Path) -> Path:
        """Extract the tree tagged `tag` into `dest` (via `git archive`)."""
        dest = Path(dest)
        self._require_repo()
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

    def card_links(self, version: str) -> CardLinks:
        """Links relative to the tree; examples load the folder by its name (never a local absolute path)."""
        return CardLinks(load_path=self.path.name if self.path.is_absolute() else str(self.path))

    def make_private(self) -> None:
        """Nothing to do: a local folder is not published anywhere."""

    def load_dataset_args(self, tag: str) -> tuple[str, dict]:
        """The folder itself when `tag` is its checked-out HEAD, else a cached checkout of `tag`.

        `datasets` keys its cache of a local folder on the folder name and the config, not on the files'
        content, so a re-released folder would load stale rows: the kwargs carry a `cache_dir` per tree.
        """
        self._require_repo()
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

    def _require_repo(self) -> None:
        if not self.path.exists():
            raise TargetError(self.uri, "no such folder")
        if not (self.path / ".git").is_dir():
            raise TargetError(self.uri, "not a release folder (no git repository; `lmsynth release --to` makes one)")

    def _ensure_repo(self) -> None:
        """A usable repository, repairing what a killed publish (or `git init`) left; call with the lock held."""
        git_dir = self.path / ".git"
        if git_dir.is_dir():
            # Under our lock no lmsynth git command runs here: git's lock files are leftovers of a kill.
            stale = [git_dir / "index.lock", git_dir / "HEAD.lock", git_dir / "packed-refs.lock"]
            stale += list((git_dir / "refs").rglob("*.lock")) if (git_dir / "refs").is_dir() else []
            for p in stale:
                if p.is_file():
                    log.warning("%s: removing %s left by a killed command", self.uri, p.relative_to(self.path))
                    p.unlink()
            if not all((git_dir / name).exists() for name in ("HEAD", "config", "objects", "refs")):
                self._git("init", "-q", "-b", BRANCH)  # an interrupted init: re-running it is safe
            self._finish_swap()
            return
        if any(self.path.iterdir()):
            raise TargetError(
                self.uri, "exists, is not empty and is not a git repository; refusing to publish into it"
            )
        self._git("init", "-q", "-b", BRANCH)

    def _is_unfinished(self, commit: str, message: str) -> bool:
        """Whether `commit` is this release's commit that a killed publish left without any tag."""
        same = self._git("log", "-1", "--format=%B", commit).strip() == message.strip()
        return same and not self._git("tag", "--points-at", commit).strip()

    def _tree_of(self, tree: Path) -> str:
        with scratch_dir("git-index") as tmp:
            env = {"GIT_INDEX_FILE": str(tmp / "index"), "GIT_WORK_TREE": str(tree.resolve())}
            self._git("add", "-A", "--force", ".", extra_env=env, cwd=tree)
            return self._git("write-tree", extra_env=env, cwd=tree).strip()

    def _sync_worktree(self) -> None:
        """Make the folder's files exactly the branch's tree (untracked top-level entries stay).

        Nothing is written in place: the tree is checked out into `.git/lmsynth/next/` with a private index,
        checked complete, and its top-level entries swapped in by renames (which need no free space).
        """
        if self._rev(f"refs/heads/{BRANCH}") is None:
            return
        self._git("symbolic-ref", "HEAD", f"refs/heads/{BRANCH}")
        if self._clean():
            return
        swap = self.path / SWAP_DIR
        stage, index = swap / "next", swap / "index"
        _remove(swap)
        stage.mkdir(parents=True)
        env = {"GIT_INDEX_FILE": str(index.resolve()), "GIT_WORK_TREE": str(stage.resolve())}
        self._git("read-tree", BRANCH, extra_env=env)
        self._git("checkout-index", "-a", "-f", "-u", extra_env=env, cwd=stage)
        self._check_complete(stage)
        kill_point("publish.staged")
        new = sorted(p.name for p in stage.iterdir())
        old = sorted({p.split("/", 1)[0] for p in self._tracked()} - set(new))
        write_text(swap / SWAP_PLAN, SwapPlan(replace=new, remove=old).model_dump_json())
        self._finish_swap()

    def _finish_swap(self) -> None:
        """Carry out a journalled swap (this publish's, or one a kill interrupted); drop an unjournalled stage."""
        swap = self.path / SWAP_DIR
        if not (swap / SWAP_PLAN).is_file():
            _remove(swap)
            return
        plan = SwapPlan.model_validate_json((swap / SWAP_PLAN).read_text(encoding="utf-8"))
        trash = swap / "old"
        trash.mkdir(exist_ok=True)
        for i, name in enumerate(plan.remove + plan.replace):
            staged = swap / "next" / name
            if name in plan.replace and not os.path.lexists(staged):
                continue  # already swapped in before a kill
            if os.path.lexists(self.path / name):
                os.rename(self.path / name, trash / name)
            if name in plan.replace:
                os.rename(staged, self.path / name)
            if i == 0:
                kill_point("publish.swapping")
        if (swap / "index").is_file():
            os.replace(swap / "index", self.path / ".git" / "index")
        (swap / SWAP_PLAN).unlink()
        _remove(swap)

    def _check_complete(self, stage: Path) -> None:
        """Every file of the branch's tree is in `stage` with its size (a write a full disk cut short is not)."""
        for entry in self._git("ls-tree", "-r", "-l", "-z", BRANCH).split("\0"):
            if not entry:
                continue
            meta, path = entry.split("\t", 1)
            size = meta.split()[3]
            if size == "-":
                continue  # a submodule: never in a release
            try:
                ok = (stage / path).lstat().st_size == int(size)
            except OSError:
                ok = False
            if not ok:
                if _disk_full(b"", self.path):
                    raise DiskFullError(self.uri, "nothing new was tagged; free space and rerun")
                raise TargetError(self.uri, f"could not write {path} of the working folder; rerun to repair")

    def _clean(self) -> bool:
        """Whether the working folder and the index hold exactly HEAD's tree (untracked files aside)."""
        try:
            return not self._git("status", "--porcelain", "--untracked-files=no").strip()
        except TargetError:
            return False  # a missing or damaged index: rebuild

    def _tracked(self) -> list[str]:
        """The paths the index lists (the working folder's previous release); none when it is unreadable."""
        try:
            return [p for p in self._git("ls-files", "-z").split("\0") if p]
        except TargetError:
            return []

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
            if _disk_full(proc.stderr, self.path):
                raise DiskFullError(self.uri, "nothing new was tagged; free space and rerun")
            why = _last_line(proc.stderr).removeprefix("fatal: ").removeprefix("error: ")
            raise TargetError(self.uri, f"git could not {_STEPS.get(args[0], args[0])} ({why}); rerun to repair")
        return proc.stdout


# What each git command does, for error messages.
_STEPS = {
    "init": "create the repository",
    "add": "stage the release tree",
    "write-tree": "store the release tree",
    "commit-tree": "make the release commit",
    "update-ref": "move the branch",
    "tag": "tag the release",
    "read-tree": "read the release tree",
    "checkout-index": "write the working folder",
    "ls-tree": "list the release tree",
    "status": "check the working folder",
    "ls-files": "list the working folder",
    "symbolic-ref": "point HEAD at the branch",
    "archive": "read the release",
    "show": "read a file of the release",
    "rev-parse": "open the repository",
    "log": "read the branch",
}
# Where the next working folder is built before it is swapped in (inside `.git`: same file system, never
# part of the tree `load_dataset` and `verify` read), and the journal of the swap.
SWAP_DIR = Path(".git") / "lmsynth"
SWAP_PLAN = "swap.json"


class SwapPlan(BaseModel):
    """`.git/lmsynth/swap.json`: the top-level entries a swap replaces (from `next/`) and removes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    replace: list[str]
    remove: list[str]


# Folders whose lock this process holds: resolved path → (fd, depth).
_HELD: dict[str, tuple[int, int]] = {}


def _git_env() -> dict[str, str]:
    # No secret (git and its hooks need none), and none of the caller's GIT_* settings.
    env = {k: v for k, v in constants.child_env().items() if not k.startswith("GIT_")}
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


def _disk_full(stderr: bytes, path: Path) -> bool:
    """Whether git failed for want of space: it says so, or it failed with the folder's disk full."""
    return b"No space left on device" in stderr or no_space_left(path)


def _remove(path: Path) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
