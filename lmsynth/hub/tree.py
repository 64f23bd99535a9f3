"""Checks on a built release tree, run before any network call.

A target publishes exactly the files MANIFEST.json lists (plus MANIFEST.json itself): a file missing,
changed or not listed stops the publish with a `ChecksumError` before the hub sees a request, so what the
tag points at is always what the manifest describes.
"""

from __future__ import annotations

from pathlib import Path

from lmsynth.errors import ChecksumError, TargetError
from lmsynth.io import sha256_file
from lmsynth.release.layout import MANIFEST_FILE


def tree_files(tree: Path) -> list[str]:
    """Relative POSIX paths of the tree's files, sorted; hidden files and folders (`.git`, caches) skipped."""
    out = []
    for path in tree.rglob("*"):
        rel = path.relative_to(tree)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)


def check_tree(tree: Path) -> list[str]:
    """Verify `tree` against its MANIFEST.json and return the files to publish (MANIFEST.json included).

    Raises:
        TargetError: `tree` is not a folder or has no MANIFEST.json.
        ChecksumError: a listed file is missing or differs, or a file is not listed.
    """
    from lmsynth.release.manifest import ChecksumManifest

    tree = Path(tree)
    manifest_path = tree / MANIFEST_FILE
    if not manifest_path.is_file():
        raise TargetError(str(tree), f"not a release tree: no {MANIFEST_FILE}; build it with `lmsynth release`")
    try:
        manifest = ChecksumManifest.model_validate_json(manifest_path.read_bytes(), strict=True)
    except ValueError as e:
        raise ChecksumError(str(manifest_path), f"invalid {MANIFEST_FILE}: {' '.join(str(e).split())[:200]}") from e
    files = tree_files(tree)
    for rel in files:
        if rel != MANIFEST_FILE and rel not in manifest.files:
            raise ChecksumError(rel, f"not listed in {MANIFEST_FILE}; rebuild the release")
    for rel, entry in manifest.files.items():
        path = tree / rel
        if not path.is_file():
            raise ChecksumError(rel, f"listed in {MANIFEST_FILE} but missing from the tree")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise ChecksumError(rel, f"differs from its sha256/size in {MANIFEST_FILE}; rebuild the release")
    return files
