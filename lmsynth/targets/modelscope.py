"""The ModelScope target (`ms://ORG/NAME`): a dataset repo on branch `master`, versions as repo tags.

Publishing mirrors the HF target: create the repo if missing, then ONE commit on `master` that uploads the
tree and deletes every remote file the tree no longer has (skipped when the remote MANIFEST.json already
equals the local one), then a tag on the commit that upload created, and a check that the tag holds exactly
the tree. A tree needing more operations than one ModelScope commit takes is refused unless `force` (then the
SDK's `upload_folder(sync_remote_repo=True)` uploads in several commits and deletes afterwards). Where the
hub does not name the commit it created (or nothing was uploaded), `master` is tagged only after it was
checked to hold exactly the tree. The client is `modelscope.hub.api.HubApi` (the `modelscope` extra),
imported only here, with `repo_type="dataset"` on every call (its default is "model"), token from
`MODELSCOPE_API_TOKEN` and endpoint from `MODELSCOPE_ENDPOINT`. `download` is the SDK's own download of the
tag (what ModelScope users get), which is also what `lmsynth verify --from ms://...` loads.

ModelScope reads its own README vocabulary (full license names), so `README.md` on ModelScope is a card
generated from the HF card's YAML and MANIFEST.json; the HF card ships beside it as `README_hf.md`. Every
other file is byte-identical to the tree, so MANIFEST.json's checksums hold for all but `README.md`.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from lmsynth import constants
from lmsynth.config import parse_yaml
from lmsynth.errors import MissingDependencyError, TagConflictError, TargetError
from lmsynth.io import atomic_dir, sha256_file
from lmsynth.retry import RetryPolicy
from lmsynth.targets._retry import policy_from_env, with_retries
from lmsynth.targets.base import CardLinks, PublishResult, Target, note_tagged, note_untagged
from lmsynth.targets.schemes import MS, parse_repo_id
from lmsynth.tree.layout import INDEX_CARD, MANIFEST_FILE
from lmsynth.tree.manifest_json import check_tree, read_manifest


log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
BRANCH = "master"
HF_CARD_COPY = "README_hf.md"
VISIBILITY_PUBLIC = 5
BLOB_BATCH = 64  # objects per LFS batch request (the SDK's own limit)
# Hub license ids → the full names ModelScope's cards use.
LICENSE_NAMES = {
    "apache-2.0": "Apache License 2.0",
    "mit": "MIT License",
    "cc-by-4.0": "Creative Commons Attribution 4.0 International",
    "cc-by-sa-4.0": "Creative Commons Attribution Share Alike 4.0 International",
    "cc-by-nc-4.0": "Creative Commons Attribution Non Commercial 4.0 International",
    "llama3.1": "Llama 3.1 Community License Agreement",
    "gemma": "Gemma Terms of Use",
    "other": "Other",
}


def get_modelscope_api():  # noqa: ANN201 — the client type is optional
    """The one place a ModelScope `HubApi` is built; reads token and endpoint from the environment now.

    Raises:
        MissingDependencyError: the `modelscope` extra is not installed.
    """
    try:
        from modelscope.hub.api import HubApi
        from modelscope_hub.config import set_default_config
    except ImportError as e:
        raise MissingDependencyError("modelscope", extra="modelscope") from e
    set_default_config(None)  # endpoint, token and cache are otherwise read once per process
    token = constants.modelscope_token_from_env()
    return HubApi(endpoint=constants.modelscope_endpoint(), token=token)


def modelscope_card(tree: Path) -> str:
    """ModelScope's README for `tree`: its YAML vocabulary (full license names) from the HF card's data."""
    text = (tree / INDEX_CARD).read_text(encoding="utf-8")
    header, body = _split_card(text, path=tree / INDEX_CARD)
    manifest = read_manifest(tree)
    licenses = sorted({s.license.display_name for s in manifest.subsets.values()})
    hf_license = str(header.get("license") or "other")
    meta: dict = {
        "license": LICENSE_NAMES.get(hf_license, hf_license) if hf_license != "other" else "Other",
        "license_names": licenses or None,
        "pretty_name": header.get("pretty_name"),
        "language": header.get("language"),
        "tags": header.get("tags"),
        "task_categories": ["text-generation"],
        "domain": ["nlp"],
        "configs": header.get("configs"),
    }
    meta = {k: v for k, v in meta.items() if v is not None}
    note = f"\n> The Hugging Face card of this release is [`{HF_CARD_COPY}`]({HF_CARD_COPY}).\n"
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n{note}{body}"


class ModelScopeTarget(Target):
    """A dataset repo on ModelScope; versions are repo tags on `master`."""

    def __init__(self, repo_id: str, *, retry: RetryPolicy | None = None) -> None:
        self.repo_id = repo_id
        self.uri = f"{MS}://{repo_id}"
        self.retry = retry or policy_from_env()

    @classmethod
    def from_uri(cls, uri: str) -> ModelScopeTarget:
        """Build from `ms://ORG/NAME`."""
        return cls(parse_repo_id(uri, "ms"))

    def publish(self, tree: Path, *, tag: str, message: str, force: bool = False) -> PublishResult:
        """Upload `tree` to `master` in one commit that also deletes what the tree no longer has, and tag it `tag`.

        Raises:
            ChecksumError: the tree does not match its MANIFEST.json.
            TagConflictError: `tag` exists on different content (ModelScope tags are not moved: pass a new
                version instead).
            MissingDependencyError: the `modelscope` extra is not installed.
            TargetError: the hub refused or kept failing, or the tree needs more than one commit and `force` is off.
        """
        if not tag:
            raise TargetError(self.uri, "`tag` can't be empty")
        tree = Path(tree)
        check_tree(tree)
        local_manifest = (tree / MANIFEST_FILE).read_bytes()
        note_untagged(self.uri, tag)
        api = get_modelscope_api()
        self._step("create the repo", lambda: self._create(api, tree))
        if tag in self._step("read the tags", lambda: self._tags(api)):
            if self._get(api, MANIFEST_FILE, tag) == local_manifest:
                note_tagged(self.uri, tag)
                return PublishResult(target=self.uri, tag=tag, commit=None, created_commit=False)
            raise TagConflictError(
                self.uri, tag, f"tag `{tag}` already exists with different content; ModelScope tags are not moved"
            )
        created, commit = False, None
        if self._step("read the release", lambda: self._get(api, MANIFEST_FILE, BRANCH)) != local_manifest:
            with tempfile.TemporaryDirectory(prefix="lmsynth-ms-") as tmp:
                stage = _stage(tree, Path(tmp) / "tree")
                commit = self._step("upload the release", lambda: self._commit(api, stage, message, force))
            created = True
        if commit is None:
            # The hub did not name the commit (or `master` already held this release): tag `master` only once
            # it holds exactly the tree, and check the tag afterwards.
            self._step("check the upload", lambda: self._check_remote(api, tree, BRANCH))
        self._step("tag the release", lambda: self._tag(api, tag, commit or BRANCH))
        note_tagged(self.uri, tag)
        self._step("check the tag", lambda: self._check_remote(api, tree, tag))
        log.info("%s: %s -> %s (new commit: %s)", self.uri, tag, commit or BRANCH, created)
        return PublishResult(target=self.uri, tag=tag, commit=commit, created_commit=created)

    def fetch_file(self, path: str, *, revision: str) -> bytes | None:
        """One file at `revision` (tag or branch), or None when the repo, revision or file is absent."""
        api = get_modelscope_api()
        return self._step(f"read {path}@{revision}", lambda: self._get(api, path, revision))

    def download(self, tag: str, dest: Path) -> Path:
        """The tree tagged `tag` as ModelScope users get it (the SDK's download), README.md the HF card again."""
        api = get_modelscope_api()
        if self._step(f"read {MANIFEST_FILE}@{tag}", lambda: self._get(api, MANIFEST_FILE, tag)) is None:
            raise TargetError(self.uri, f"no release `{tag}` (tag or {MANIFEST_FILE} missing)")
        with atomic_dir(dest) as tmp:
            got = tmp / ".download"
            self._step(
                f"download {tag}", lambda: api._api.download_repo(self.repo_id, REPO_TYPE, revision=tag, local_dir=got)
            )
            for path in sorted(got.rglob("*")):
                rel = path.relative_to(got)
                if path.is_dir() or any(p.startswith(".") for p in rel.parts) or rel.as_posix() == INDEX_CARD:
                    continue  # the SDK's bookkeeping, and ModelScope's card (the HF card takes its place)
                out = tmp / (INDEX_CARD if rel.as_posix() == HF_CARD_COPY else rel)
                out.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, out)
            shutil.rmtree(got)
        return Path(dest)

    def card_links(self, version: str) -> CardLinks:
        """Links into ModelScope's file view at the tag; examples load the repo id at the tag."""
        base = f"https://www.modelscope.cn/datasets/{self.repo_id}/resolve/{version}/"
        return CardLinks(link_base=base, load_path=self.repo_id, revision=version)

    def load_dataset_args(self, tag: str) -> None:
        """None: ModelScope is not a `datasets` hub; a release is checked by loading its download."""
        return None

    # Private helpers

    def _step(self, action: str, fn):
        return with_retries(fn, target=self.uri, action=action, policy=self.retry)

    def _create(self, api, tree: Path) -> None:
        api.create_repo(
            self.repo_id, repo_type=REPO_TYPE, visibility=VISIBILITY_PUBLIC, license="Other", exist_ok=True
        )

    def _tags(self, api) -> set[str]:
        """The repo's tag names (the revisions listing carries `Revision` and `CreatedAt`, no commit)."""
        from modelscope_hub.errors import NotExistError

        try:
            _, tags = api._api.legacy.list_revisions_detail(repo_id=self.repo_id, repo_type=REPO_TYPE)
        except NotExistError:
            return set()
        return {r.get("Revision") for r in tags}

    def _commit(self, api, stage: Path, message: str, force: bool) -> str | None:
        """Upload `stage` and delete what it no longer has in ONE commit; return the commit's id if the hub says."""
        from modelscope_hub._upload import _upload_mode
        from modelscope_hub.constants import UPLOAD_COMMIT_BATCH_MAX_OPERATIONS

        files = {p.relative_to(stage).as_posix(): p for p in sorted(stage.rglob("*")) if p.is_file()}
        stale = sorted(set(self._remote_files(api, BRANCH)) - set(files))
        if len(files) + len(stale) > UPLOAD_COMMIT_BATCH_MAX_OPERATIONS:
            if not force:
                raise TargetError(
                    self.uri,
                    f"{len(files)} files and {len(stale)} deletions exceed one ModelScope commit "
                    f"({UPLOAD_COMMIT_BATCH_MAX_OPERATIONS} operations); pass --force to upload in several commits",
                )
            api.upload_folder(
                repo_id=self.repo_id,
                folder_path=str(stage),
                repo_type=REPO_TYPE,
                revision=BRANCH,
                commit_message=message,
                use_cache=False,
                sync_remote_repo=True,
            )
            return None
        legacy = api._api.legacy
        ops: list[dict] = []
        blobs: dict[str, tuple[Path, int]] = {}
        for rel, path in files.items():
            size = path.stat().st_size
            if _upload_mode(rel, size, REPO_TYPE) == "lfs":
                sha = sha256_file(path)
                blobs[sha] = (path, size)
                ops.append(_op("create", rel, "lfs", size=size, sha256=sha))
            else:
                ops.append(_op("create", rel, "normal", size=size, content=base64.b64encode(path.read_bytes())))
        ops += [_op("delete", rel, "normal") for rel in stale]
        shas = list(blobs)
        for i in range(0, len(shas), BLOB_BATCH):
            objects = [{"oid": sha, "size": blobs[sha][1]} for sha in shas[i : i + BLOB_BATCH]]
            for sha, url in legacy.validate_blobs(self.repo_id, REPO_TYPE, objects).items():
                if url:
                    with open(blobs[sha][0], "rb") as f:
                        legacy.upload_blob(url, f, blobs[sha][1])
        return _commit_id(legacy.create_commit(self.repo_id, REPO_TYPE, ops, message, revision=BRANCH))

    def _remote_files(self, api, revision: str) -> dict[str, str | None]:
        """Path → sha256 of every file at `revision` (folder entries left out)."""
        from modelscope_hub.errors import NotExistError

        try:
            entries = api._api.list_repo_files(self.repo_id, REPO_TYPE, revision=revision)
        except NotExistError:
            return {}
        return {f.path: f.sha256 for f in entries if f.path and getattr(f, "type", "blob") != "tree"}

    def _check_remote(self, api, tree: Path, revision: str) -> None:
        """`revision` holds exactly the tree: every file with its checksum, and nothing else."""
        manifest = read_manifest(tree)
        remote = self._remote_files(api, revision)
        expected = {p: e.sha256 for p, e in manifest.files.items() if p != INDEX_CARD}
        expected[HF_CARD_COPY] = sha256_file(tree / INDEX_CARD)
        expected[MANIFEST_FILE] = sha256_file(tree / MANIFEST_FILE)
        differ = sorted(p for p, sha in expected.items() if remote.get(p) != sha)
        extra = sorted(set(remote) - set(expected) - {INDEX_CARD})
        if differ:
            raise TargetError(self.uri, f"{revision}: {len(differ)} files differ from the release, e.g. {differ[0]}")
        if extra:
            raise TargetError(self.uri, f"{revision}: holds {len(extra)} files the release does not, e.g. {extra[0]}")

    def _get(self, api, path: str, revision: str) -> bytes | None:
        from modelscope_hub.errors import NotExistError

        with tempfile.TemporaryDirectory(prefix="lmsynth-ms-") as tmp:
            try:
                local = api._api.download_file(
                    self.repo_id, REPO_TYPE, path, revision=revision, local_dir=tmp, force=True
                )
            except NotExistError:
                return None
            return Path(local).read_bytes()

    def _tag(self, api, tag: str, revision: str) -> None:
        if tag in self._tags(api):
            return
        api.create_repo_tag(self.repo_id, REPO_TYPE, tag, revision=revision)


def _op(action: str, path: str, kind: str, *, size: int = 0, sha256: str = "", content: bytes = b"") -> dict:
    """One action of a ModelScope commit, in the SDK's own shape."""
    return {
        "action": action,
        "path": path,
        "type": kind,
        "size": size,
        "sha256": sha256,
        "content": content.decode(),
        "encoding": "base64" if content else "",
    }


def _commit_id(data: object) -> str | None:
    """The id of the commit a commit call created, when the answer carries one."""
    if isinstance(data, dict):
        for key in ("CommitId", "Sha", "Oid", "Revision"):
            value = data.get(key)
            if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{7,64}", value):
                return value
    return None


def _split_card(text: str, *, path: Path) -> tuple[dict, str]:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return parse_yaml(text[4:end], path=path) or {}, text[end + 4 :].lstrip("\n")
    return {}, text


def _stage(tree: Path, stage: Path) -> Path:
    """A hard-linked copy of `tree` with ModelScope's card as README.md and the HF card as README_hf.md."""
    for rel in read_manifest(tree).paths():
        path, out = tree / rel, stage / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, out)
        except OSError:
            shutil.copy2(path, out)
    (stage / INDEX_CARD).unlink()
    shutil.copy2(tree / INDEX_CARD, stage / HF_CARD_COPY)
    (stage / INDEX_CARD).write_text(modelscope_card(tree), encoding="utf-8")
    return stage
