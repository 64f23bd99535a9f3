"""The Hugging Face Hub target (`hf://ORG/NAME`): one commit per release, then a tag on that commit.

A publish is three idempotent steps, each retried with backoff and each re-reading the remote first:

1. create the dataset repo if it is missing;
2. commit the whole tree in ONE `create_commit` on `main` (`parent_commit` = the head just read, so a
   concurrent push makes the commit fail instead of being overwritten; remote files not in the tree are
   deleted in the same commit) — skipped when the remote MANIFEST.json already equals the local one;
3. `create_tag(version, revision=<that commit's sha>)`, never `main`, so the tag cannot land on someone
   else's commit.

A failure before step 3 leaves no tag, and a rerun finds the commit (same MANIFEST.json) and only tags it.
A tag that already points at different content is refused (`TagConflictError`) unless `force`.

Xet: huggingface_hub uploads through Xet when `hf_xet` is installed, which is what the Hub itself
expects and still ends in a single commit; servers without Xet (the test stand-in, some proxies) need
`HF_HUB_DISABLE_XET=1` in the environment, which the client reads at import.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lmsynth import __version__
from lmsynth.errors import TagConflictError, TargetError
from lmsynth.io import atomic_dir
from lmsynth.retry import RetryPolicy
from lmsynth.targets._retry import http_status, policy_from_env, with_retries
from lmsynth.targets.base import CardLinks, PublishResult, Target, note_tagged, note_untagged
from lmsynth.targets.schemes import HF, parse_repo_id
from lmsynth.tree.layout import MANIFEST_FILE
from lmsynth.tree.manifest_json import check_tree


if TYPE_CHECKING:
    from huggingface_hub import HfApi


log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
BRANCH = "main"
# Files the Hub writes itself; never deleted by a release.
HUB_OWNED = frozenset({".gitattributes"})


def get_hf_api() -> HfApi:
    """The one place an `HfApi` is built (tests patch this name); the client resolves token and endpoint."""
    from huggingface_hub import HfApi

    return HfApi(library_name="lmsynth", library_version=__version__)


class HfTarget(Target):
    """A dataset repo on the Hugging Face Hub; versions are git tags. It can be made private."""

    can_make_private = True

    def __init__(self, repo_id: str, *, retry: RetryPolicy | None = None) -> None:
        self.repo_id = repo_id
        self.uri = f"{HF}://{repo_id}"
        self.retry = retry or policy_from_env()

    @classmethod
    def from_uri(cls, uri: str) -> HfTarget:
        """Build from `hf://ORG/NAME`."""
        return cls(parse_repo_id(uri, HF))

    def publish(self, tree: Path, *, tag: str, message: str, force: bool = False) -> PublishResult:
        """Commit `tree` in one commit and tag it `tag` (no commit when the remote already holds it).

        Args:
            tree: a built release tree; checked against its MANIFEST.json before any request.
            tag: the version tag, e.g. `v0.5`.
            message: the commit message.
            force: move `tag` when it points at different content.

        Returns:
            The commit the tag points at, whether a commit was made and whether the tag moved.

        Raises:
            ChecksumError: the tree does not match its MANIFEST.json.
            TagConflictError: `tag` exists on different content and `force` is off.
            TargetError: the hub refused or kept failing (`HubAuthError`, `HubRateLimitError`).
        """
        if not tag:
            raise TargetError(self.uri, "`tag` can't be empty")
        tree = Path(tree)
        files = check_tree(tree).paths()
        local_manifest = (tree / MANIFEST_FILE).read_bytes()
        note_untagged(self.uri, tag)
        api = get_hf_api()
        self._step("create the repo", lambda: api.create_repo(self.repo_id, repo_type=REPO_TYPE, exist_ok=True))
        commit, created = self._step(
            "commit the release", lambda: self._commit(api, tree, files, local_manifest, tag, message, force)
        )
        moved = self._step("tag the release", lambda: self._tag(api, tag, commit, force))
        note_tagged(self.uri, tag)
        log.info("%s: %s -> %s (new commit: %s)", self.uri, tag, commit, created)
        return PublishResult(target=self.uri, tag=tag, commit=commit, created_commit=created, moved_tag=moved)

    def fetch_file(self, path: str, *, revision: str) -> bytes | None:
        """One file at `revision`, or None when the repo, revision or file is absent."""
        return self._step(f"read {path}@{revision}", lambda: self._get(path, revision))

    def download(self, tag: str, dest: Path) -> Path:
        """Materialise the tree tagged `tag` into `dest` (atomically: a temp folder renamed at the end)."""
        from huggingface_hub import snapshot_download

        dest = Path(dest)
        if self.fetch_file(MANIFEST_FILE, revision=tag) is None:
            raise TargetError(self.uri, f"no release `{tag}` (tag or {MANIFEST_FILE} missing)")
        with atomic_dir(dest) as tmp:
            self._step(
                f"download {tag}",
                lambda: snapshot_download(self.repo_id, repo_type=REPO_TYPE, revision=tag, local_dir=tmp),
            )
            shutil.rmtree(tmp / ".cache", ignore_errors=True)
            for name in HUB_OWNED:  # the Hub's own files are not part of the release tree
                (tmp / name).unlink(missing_ok=True)
        return dest

    def load_dataset_args(self, tag: str) -> tuple[str, dict]:
        """`load_dataset(repo_id, config, revision=tag)`."""
        return self.repo_id, {"revision": tag}

    def card_links(self, version: str) -> CardLinks:
        """Links into the Hub's file view at the tag; examples load the repo id at the tag."""
        base = f"https://huggingface.co/datasets/{self.repo_id}/resolve/{version}/"
        return CardLinks(link_base=base, load_path=self.repo_id, revision=version)

    def make_private(self) -> None:
        """Create the repo private, or switch an existing public one to private (`exist_ok` keeps it public)."""
        api = get_hf_api()
        repo, kind = self.repo_id, REPO_TYPE
        self._step(
            "create the private repo", lambda: api.create_repo(repo, repo_type=kind, private=True, exist_ok=True)
        )
        self._step("make the repo private", lambda: api.update_repo_settings(repo, repo_type=kind, private=True))
        log.info("%s is private", self.uri)

    # Private helpers

    def _step(self, action: str, fn):
        return with_retries(fn, target=self.uri, action=action, policy=self.retry)

    def _refs(self, api: HfApi) -> tuple[str | None, dict[str, str]]:
        refs = api.list_repo_refs(self.repo_id, repo_type=REPO_TYPE)
        head = next((b.target_commit for b in refs.branches if b.name == BRANCH), None)
        return head, {t.name: t.target_commit for t in refs.tags}

    def _commit(
        self, api: HfApi, tree: Path, files: list[str], manifest: bytes, tag: str, message: str, force: bool
    ) -> tuple[str, bool]:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        # 1. Where do the branch and the tag stand now?
        head, tags = self._refs(api)
        if tag in tags:
            if self._get(MANIFEST_FILE, tags[tag]) == manifest:
                return tags[tag], False
            if not force:
                raise TagConflictError(self.uri, tag)
        # 2. Nothing to commit when the branch already holds this release (e.g. a rerun after a lost tag).
        if head is not None and self._get(MANIFEST_FILE, head) == manifest:
            return head, False
        # 3. One commit: every file of the tree, and deletions of remote files the tree no longer has.
        remote = set()
        if head is not None:
            entries = api.list_repo_tree(self.repo_id, repo_type=REPO_TYPE, revision=head, recursive=True)
            remote = {e.path for e in entries if type(e).__name__ == "RepoFile"}
        stale = sorted(remote - set(files) - HUB_OWNED)
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(tree / p)) for p in files]
        ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
        info = api.create_commit(
            self.repo_id,
            ops,
            commit_message=message,
            repo_type=REPO_TYPE,
            revision=BRANCH,
            parent_commit=head,
        )
        return info.oid, True

    def _tag(self, api: HfApi, tag: str, commit: str, force: bool) -> bool:
        _, tags = self._refs(api)
        if tags.get(tag) == commit:
            return False
        moved = tag in tags
        if moved:
            if not force:
                raise TagConflictError(self.uri, tag)
            api.delete_tag(self.repo_id, tag=tag, repo_type=REPO_TYPE)
        api.create_tag(self.repo_id, tag=tag, revision=commit, repo_type=REPO_TYPE)
        return moved

    def _get(self, path: str, revision: str) -> bytes | None:
        """The file, or None only when the Hub answered 404 for the file, the revision or the repo.

        `hf_hub_download` reports a HEAD call that failed for any other reason (a 5xx, a 429, a reset) as
        `LocalEntryNotFoundError`, a subclass of `EntryNotFoundError`: that one is a failure, never "absent".
        """
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        with tempfile.TemporaryDirectory(prefix="lmsynth-hf-") as tmp:
            try:
                local = hf_hub_download(self.repo_id, path, repo_type=REPO_TYPE, revision=revision, local_dir=tmp)
            except LocalEntryNotFoundError:
                raise
            except (RemoteEntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError) as e:
                if http_status(e) != 404:
                    raise
                log.debug("%s: %s@%s absent (%s)", self.uri, path, revision, type(e).__name__)
                return None
            return Path(local).read_bytes()
