"""The ModelScope target (`ms://ORG/NAME`): a dataset repo on branch `master`, versions as repo tags.

Publishing mirrors the HF target: create the repo if missing, upload the tree to `master` in one
commit (skipped when the remote MANIFEST.json already equals the local one), then tag that commit. The
client is `modelscope.hub.api.HubApi` (the `modelscope` extra), imported only here, with
`repo_type="dataset"` on every call (its default is "model"), token from `MODELSCOPE_API_TOKEN` and
endpoint from `MODELSCOPE_ENDPOINT`.

ModelScope reads its own README vocabulary (full license names), so `README.md` on ModelScope is a card
generated from the HF card's YAML and MANIFEST.json; the HF card ships beside it as `README_hf.md`. Every
other file is byte-identical to the tree, so MANIFEST.json's checksums hold for all but `README.md`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from lmsynth import constants
from lmsynth.errors import MissingDependencyError, TagConflictError, TargetError
from lmsynth.hub.retry import RetryPolicy, with_retries
from lmsynth.hub.tree import check_tree
from lmsynth.release.layout import INDEX_CARD, MANIFEST_FILE
from lmsynth.targets.base import PublishResult
from lmsynth.targets.hf import parse_repo_id


log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
BRANCH = "master"
HF_CARD_COPY = "README_hf.md"
VISIBILITY_PUBLIC = 5
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
    from lmsynth.release.manifest import ChecksumManifest

    text = (tree / INDEX_CARD).read_text(encoding="utf-8")
    header, body = _split_card(text)
    manifest = ChecksumManifest.model_validate_json((tree / MANIFEST_FILE).read_bytes())
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


class ModelScopeTarget:
    """A dataset repo on ModelScope; versions are repo tags on `master`."""

    def __init__(self, repo_id: str, *, retry: RetryPolicy | None = None) -> None:
        self.repo_id = repo_id
        self.uri = f"ms://{repo_id}"
        self.retry = retry or RetryPolicy.from_env()

    @classmethod
    def from_uri(cls, uri: str) -> ModelScopeTarget:
        """Build from `ms://ORG/NAME`."""
        return cls(parse_repo_id(uri, "ms"))

    def publish(self, tree: Path, *, tag: str, message: str, force: bool = False) -> PublishResult:
        """Upload `tree` to `master` in one commit (with ModelScope's card) and tag it `tag`.

        Raises:
            ChecksumError: the tree does not match its MANIFEST.json.
            TagConflictError: `tag` exists on different content and `force` is off (ModelScope tags are
                not moved: pass a new version instead).
            MissingDependencyError: the `modelscope` extra is not installed.
            TargetError: the hub refused or kept failing.
        """
        if not tag:
            raise TargetError(self.uri, "`tag` can't be empty")
        tree = Path(tree)
        check_tree(tree)
        local_manifest = (tree / MANIFEST_FILE).read_bytes()
        api = get_modelscope_api()
        self._step("create the repo", lambda: self._create(api, tree))
        tags = self._step("read the tags", lambda: self._tags(api))
        if tag in tags:
            if self._get(api, MANIFEST_FILE, tag) == local_manifest:
                return PublishResult(target=self.uri, tag=tag, commit=tags[tag], created_commit=False)
            raise TagConflictError(
                self.uri, tag, f"tag `{tag}` already exists with different content; ModelScope tags are not moved"
            )
        created = False
        if self._step("read the release", lambda: self._get(api, MANIFEST_FILE, BRANCH)) != local_manifest:
            with tempfile.TemporaryDirectory(prefix="lmsynth-ms-") as tmp:
                stage = _stage(tree, Path(tmp) / "tree")
                self._step("upload the release", lambda: self._upload(api, stage, message))
            created = True
        commit = self._step("read the head", lambda: self._tags(api, branches=True).get(BRANCH))
        # The client may split or retry an upload over several commits: tag only a head holding every file.
        self._step("check the upload", lambda: self._check_remote(api, tree, commit or BRANCH))
        self._step("tag the release", lambda: self._tag(api, tag, commit or BRANCH))
        return PublishResult(target=self.uri, tag=tag, commit=commit, created_commit=created)

    def fetch_file(self, path: str, *, revision: str) -> bytes | None:
        """One file at `revision` (tag or branch), or None when the repo, revision or file is absent."""
        api = get_modelscope_api()
        return self._step(f"read {path}@{revision}", lambda: self._get(api, path, revision))

    def download(self, tag: str, dest: Path) -> Path:
        """Materialise the tree tagged `tag` into `dest`; README.md becomes the HF card again."""
        from lmsynth.io import atomic_dir

        api = get_modelscope_api()
        files = self._step(f"list {tag}", lambda: self._list(api, tag))
        if MANIFEST_FILE not in files:
            raise TargetError(self.uri, f"no release `{tag}` (tag or {MANIFEST_FILE} missing)")
        with atomic_dir(dest) as tmp:
            for path in files:
                data = self._step(f"download {path}", lambda p=path: self._get(api, p, tag))
                out = tmp / (INDEX_CARD if path == HF_CARD_COPY else path)
                if path == INDEX_CARD:
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data or b"")
        return Path(dest)

    def load_dataset_args(self, tag: str) -> tuple[str, dict]:
        """ModelScope is not a `datasets` hub: load a downloaded copy (`download(tag, dest)`) instead."""
        raise TargetError(self.uri, "load a ModelScope release from `download(tag, dest)`, not by repo id")

    # Private helpers

    def _step(self, action: str, fn):
        return with_retries(fn, target=self.uri, action=action, policy=self.retry)

    def _create(self, api, tree: Path) -> None:
        api.create_repo(
            self.repo_id, repo_type=REPO_TYPE, visibility=VISIBILITY_PUBLIC, license="Other", exist_ok=True
        )

    def _tags(self, api, *, branches: bool = False) -> dict[str, str]:
        from modelscope_hub.errors import NotExistError

        try:
            detail = api._api.legacy.list_revisions_detail(repo_id=self.repo_id, repo_type=REPO_TYPE)
        except NotExistError:
            return {}
        heads, tags = detail
        refs = heads if branches else tags
        return {r.get("Revision"): r.get("CommitId") or r.get("Revision") for r in refs}

    def _check_remote(self, api, tree: Path, revision: str) -> None:
        from lmsynth.io import sha256_file
        from lmsynth.release.manifest import ChecksumManifest

        manifest = ChecksumManifest.model_validate_json((tree / MANIFEST_FILE).read_bytes())
        remote = {f.path: f.sha256 for f in api._api.list_repo_files(self.repo_id, REPO_TYPE, revision=revision)}
        expected = {p: e.sha256 for p, e in manifest.files.items() if p != INDEX_CARD}
        expected[HF_CARD_COPY] = sha256_file(tree / INDEX_CARD)
        expected[MANIFEST_FILE] = sha256_file(tree / MANIFEST_FILE)
        missing = sorted(p for p, sha in expected.items() if remote.get(p) != sha)
        if missing:
            raise TargetError(self.uri, f"upload incomplete ({len(missing)} files differ, e.g. {missing[0]}); rerun")

    def _list(self, api, revision: str) -> list[str]:
        files = api._api.list_repo_files(self.repo_id, REPO_TYPE, revision=revision)
        return sorted(getattr(f, "path", None) or f["Path"] for f in files)

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

    def _upload(self, api, stage: Path, message: str) -> None:
        api.upload_folder(
            repo_id=self.repo_id,
            folder_path=str(stage),
            repo_type=REPO_TYPE,
            revision=BRANCH,
            commit_message=message,
            use_cache=False,
        )

    def _tag(self, api, tag: str, commit: str) -> None:
        if tag in self._tags(api):
            return
        api.create_repo_tag(self.repo_id, REPO_TYPE, tag, revision=commit)


def _split_card(text: str) -> tuple[dict, str]:
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return yaml.safe_load(text[4:end]) or {}, text[end + 4 :].lstrip("\n")
    return {}, text


def _stage(tree: Path, stage: Path) -> Path:
    """A hard-linked copy of `tree` with ModelScope's card as README.md and the HF card as README_hf.md."""
    for path in tree.rglob("*"):
        rel = path.relative_to(tree)
        if path.is_dir() or any(p.startswith(".") for p in rel.parts):
            continue
        out = stage / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, out)
        except OSError:
            shutil.copy2(path, out)
    (stage / INDEX_CARD).unlink()
    shutil.copy2(tree / INDEX_CARD, stage / HF_CARD_COPY)
    (stage / INDEX_CARD).write_text(modelscope_card(tree), encoding="utf-8")
    return stage
