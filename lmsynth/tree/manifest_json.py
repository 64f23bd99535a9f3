"""`MANIFEST.json`: the model, its one writer and its one check of a release tree.

**The rule.** A release tree is `MANIFEST.json` plus exactly the files it lists, each with the listed size
and sha256. Any other file is refused, hidden ones (`.notes`, `.DS_Store`) included, because every target
publishes and `load_dataset` reads whatever is in the folder. The one thing not part of a tree is a `.git`
entry at its root: the local target's folder is a git repository, and its metadata is never published (a
`git archive` of the tag and a Hub download hold no `.git`). Publish, verify and recover all call
`check_tree`, so they accept and refuse the same trees, with one line naming the file.

Gated (encrypted) files also carry the sha256 of their plaintext and their record count: gpg output is not
byte-deterministic, so the plaintext digest is what tells a re-release that nothing changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from pydantic import Field, ValidationError, field_validator, model_validator

from lmsynth import __version__
from lmsynth.config import StrictModel, dotted
from lmsynth.errors import ChecksumError
from lmsynth.io import sha256_file, write_text
from lmsynth.progress import track
from lmsynth.tree.layout import MANIFEST_FILE


FORMAT_VERSION = 1
# The only entry of a tree's root that is not part of the tree (see the rule above).
GIT_DIR = ".git"


# ---------------------------------------------------------------------------
# What MANIFEST.json says about a subset
# ---------------------------------------------------------------------------


class LicenseSpec(StrictModel):
    """A license: an id from the Hub's list (e.g. `apache-2.0`) or `other` with name, link and notice."""

    id: str = Field(min_length=1, description="Hub license id, or `other` for a custom license.")
    name: str | None = Field(None, min_length=1, description="Human name, e.g. 'Gemma Terms of Use'.")
    link: str | None = Field(None, pattern=r"^https?://", description="Official URL of the license text.")
    notice: str | None = Field(
        None, min_length=1, description="Notice the license requires (e.g. 'Built with Llama')."
    )

    @model_validator(mode="after")
    def _other_needs_everything(self) -> LicenseSpec:
        if self.id == "other":
            for field in ("name", "link", "notice"):
                if getattr(self, field) is None:
                    raise ValueError(f"`{field}` is required when the license id is `other`")
        return self

    @property
    def display_name(self) -> str:
        """The name to print in cards."""
        return self.name or self.id


class ModelRef(StrictModel):
    """A model used by a pipeline."""

    id: str = Field(min_length=1, description="Hub model id.")
    link: str = Field(pattern=r"^https?://")


class InputRef(StrictModel):
    """Where a subset's records (or prepared folder) were read from, as MANIFEST.json records it."""

    url: str = Field(description="The URL or the path as given (relative to the runs root); never a local home.")
    commit: str | None = Field(None, description="The commit sha the files were read at (Hub URLs).")


class FileEntry(StrictModel):
    """One file of a release tree."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    plaintext_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Gated files only.")
    records: int | None = Field(None, ge=0, description="Gated files only: lines in the plaintext.")


class SubsetCounts(StrictModel):
    """Counts of one subset, as built."""

    records: int = Field(ge=0, description="Rows of the public Parquet shards (= conversations).")
    instructions_ja: int = Field(ge=0, description="Records with a non-empty, non-duplicate JA instruction.")
    responses_ja: int = Field(ge=0)
    responses_en: int = Field(0, ge=0)
    multiturn: int = Field(0, ge=0, description="Records with a multiturn conversation of 2+ user turns.")
    gated_default: int = Field(ge=0)
    gated_unsafe: int = Field(0, ge=0)


class SubsetInputs(StrictModel):
    """What a subset was built from: its records' and prepared folder's URL and commit."""

    records: InputRef
    prepared: InputRef | None = None


class SubsetInfo(StrictModel):
    """What MANIFEST.json says about a subset (read back by verify and recover)."""

    title: str
    generator: ModelRef
    judge: ModelRef
    license: LicenseSpec
    counts: SubsetCounts
    shards: list[str]
    gated: dict[str, str] = Field(description="`default`/`unsafe` → path of the encrypted file.")
    inputs: SubsetInputs | None = Field(None, description="Where the records were read from, at which commit.")


class ChecksumManifest(StrictModel):
    """`MANIFEST.json`: every other file of the tree, counts and fingerprints. Never holds the key."""

    format_version: int = FORMAT_VERSION
    version: str
    tool_version: str
    source_fingerprint: str | None = Field(
        None, description="Slow, salted key check (`lmsynth.keycheck`, scrypt); never the key."
    )
    pipelines: dict[str, str] = Field(default_factory=dict, description="Shipped pipeline file → sha256.")
    subsets: dict[str, SubsetInfo]
    files: dict[str, FileEntry]

    @field_validator("files")
    @classmethod
    def _paths_inside_the_tree(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for rel in files:
            parts = rel.split("/")
            # Empty parts also catch "", "/abs/path" and "a//b".
            if rel == MANIFEST_FILE or parts[0] == GIT_DIR or {"", ".", ".."} & set(parts):
                raise ValueError(f"{rel!r} is not the path of a file of the tree")
        return files

    def paths(self) -> list[str]:
        """Every file of the tree, MANIFEST.json included, sorted: what a target publishes."""
        return sorted([*self.files, MANIFEST_FILE])

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, fixed indent): the same manifest gives the same bytes."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------
# The tree against its manifest
# ---------------------------------------------------------------------------


def tree_files(tree: Path) -> list[str]:
    """The files of `tree` under the rule: sorted POSIX paths, MANIFEST.json and the root `.git` left out.

    A link to a folder is listed as it is (never followed), so it is refused as an unlisted file.
    """
    tree = Path(tree)
    out: list[str] = []
    for folder, dirs, names in os.walk(tree):
        rel = PurePosixPath(Path(folder).relative_to(tree).as_posix())
        if rel == PurePosixPath("."):
            dirs[:] = [d for d in dirs if d != GIT_DIR]
            names = [n for n in names if n not in (GIT_DIR, MANIFEST_FILE)]
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        out += [(rel / n).as_posix() for n in [*names, *links]]
    return sorted(out)


def file_entries(tree: Path, *, known: Mapping[str, FileEntry] | None = None) -> dict[str, FileEntry]:
    """A `FileEntry` for every file of `tree`; `known` ones (gated files, with their plaintext digest) as given."""
    known = known or {}
    return {
        rel: known.get(rel) or FileEntry(sha256=sha256_file(tree / rel), size=(tree / rel).stat().st_size)
        for rel in tree_files(tree)
    }


def write_manifest(
    tree: Path,
    *,
    version: str,
    subsets: Mapping[str, SubsetInfo] | None = None,
    pipelines: Mapping[str, str] | None = None,
    source_fingerprint: str | None = None,
    known: Mapping[str, FileEntry] | None = None,
) -> ChecksumManifest:
    """List every file of `tree` in its MANIFEST.json (written atomically, canonical bytes) and return it.

    Args:
        tree: the finished folder; every file in it at this moment is listed.
        version: the release (or export) version.
        subsets: what each subset holds (release trees; empty for export folders and the gated repo).
        pipelines: shipped pipeline file → sha256.
        source_fingerprint: the key check of the gated files.
        known: entries computed by whoever wrote the file (gated files: plaintext digest, record count).
    """
    manifest = ChecksumManifest(
        version=version,
        tool_version=__version__,
        source_fingerprint=source_fingerprint,
        pipelines=dict(pipelines or {}),
        subsets=dict(subsets or {}),
        files=file_entries(tree, known=known),
    )
    write_text(Path(tree) / MANIFEST_FILE, manifest.to_json())
    return manifest


def read_manifest(tree: Path) -> ChecksumManifest:
    """The MANIFEST.json of `tree`, validated strictly.

    Raises:
        ChecksumError: it is missing or invalid (names the field).
    """
    path = Path(tree) / MANIFEST_FILE
    if not path.is_file():
        raise ChecksumError(MANIFEST_FILE, "missing: not a release tree (`lmsynth release` builds one)")
    try:
        return ChecksumManifest.model_validate_json(path.read_bytes(), strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        raise ChecksumError(MANIFEST_FILE, f"field `{dotted(first['loc'])}`: {msg}") from None


def check_tree(tree: Path) -> ChecksumManifest:
    """Check `tree` against its MANIFEST.json under the rule (module docstring); return the manifest.

    Raises:
        ChecksumError: MANIFEST.json is missing or invalid, a file is not listed, or a listed file is missing
            or has another size or sha256; one line naming the file.
    """
    tree = Path(tree)
    manifest = read_manifest(tree)
    for rel in tree_files(tree):
        if rel not in manifest.files:
            raise ChecksumError(rel, f"not listed in {MANIFEST_FILE}: a release tree holds only the files it lists")
    entries = sorted(manifest.files.items())
    for rel, entry in track(entries, "Checking checksums", total=len(entries), unit="files"):
        path = tree / rel
        if not path.is_file():
            raise ChecksumError(rel, f"listed in {MANIFEST_FILE} but missing from the tree")
        size = path.stat().st_size
        if size != entry.size:
            raise ChecksumError(rel, f"size {size} does not match {MANIFEST_FILE} ({entry.size})")
        if sha256_file(path) != entry.sha256:
            raise ChecksumError(rel, f"sha256 does not match {MANIFEST_FILE}")
    return manifest
