"""`verify`: check a published release against its MANIFEST.json, load every config, and decrypt (given the key).

Three levels, each stronger than the last: the tagged tree passes the tree rule of `lmsynth.tree.manifest_json`
(exactly the files MANIFEST.json lists, with their sha256 and size); `datasets.load_dataset(path, config)`
loads every config with the recorded row count (by repo id at the tag on the HF Hub; on ModelScope, which is
not a `datasets` hub, the SDK's download of the tag, which is what its users get); and, with the key, every
gated file decrypts to the recorded plaintext digest and line count.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

from pydantic import SecretStr

from lmsynth import constants, keycheck
from lmsynth.config import StrictModel
from lmsynth.crypto import KEY_HINT, decrypt_file
from lmsynth.errors import ChecksumError, PassphraseError, VerifyError
from lmsynth.io import sha256_file
from lmsynth.scratch import scratch_dir
from lmsynth.targets import Target, open_target
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import ChecksumManifest, check_tree


log = logging.getLogger(__name__)


class VerifyResult(StrictModel):
    """What `verify` checked."""

    version: str
    target: str
    files_checked: int
    configs: list[str]
    rows: dict[str, int]
    gated_checked: int
    decrypted: bool
    gated_unchecked: str | None = None  # why the gated files were not decrypted (no key could be had)


def verify(
    version: str, *, target: str, passphrase: SecretStr | None = None, default_key: str | None = None
) -> VerifyResult:
    """Verify release `version` on `target`.

    Args:
        version: The tag, e.g. `v0.5`.
        target: Target URI (a folder, `hf://ORG/NAME`, `ms://ORG/NAME`).
        passphrase: When given, the gated files are decrypted and checked too.
        default_key: Where `passphrase` came from when nobody gave one (e.g. "the bundled sample's key"):
            a key that does not open this release then leaves the gated files unchecked, saying why
            (`gated_unchecked`), instead of failing. None: the passphrase was given and must match.

    Returns:
        The counts checked.

    Raises:
        ChecksumError: MANIFEST.json is missing or invalid, or a file is missing, unlisted, or differs from it.
        VerifyError: a config does not load or has another row count; a gated file has another content.
        PassphraseError: the passphrase does not match the release.
    """
    if not version:
        raise VerifyError("`version` can't be empty")
    tgt = open_target(target)
    with scratch_dir("verify") as work:  # decrypted files live here, in a scratch folder
        tree = tgt.download(version, work / "tree")
        manifest = check_tree(tree)
        _check_working_folder(tgt, version)
        rows = _check_loading(tgt, version, manifest, tree)
        gated, unchecked = 0, None
        if passphrase is None:
            unchecked = f"no key: {KEY_OPTIONS}"
        elif default_key is not None and not _opens(tree, manifest, passphrase, work=work):
            unchecked = f"{default_key} does not open this release: {KEY_OPTIONS}"
            passphrase = None
        if passphrase is not None:
            gated = _check_gated(tree, manifest, passphrase, work=work)
        return VerifyResult(
            version=version,
            target=tgt.uri,
            files_checked=len(manifest.files) + 1,
            configs=sorted(manifest.subsets),
            rows=rows,
            gated_checked=gated,
            decrypted=passphrase is not None,
            gated_unchecked=unchecked if any(i.gated for i in manifest.subsets.values()) else None,
        )


KEY_OPTIONS = f"pass --passphrase-file, set ${constants.PASSPHRASE_ENV} or give --source to decrypt the gated files"


# Private helpers


def _opens(tree: Path, manifest: ChecksumManifest, passphrase: SecretStr, *, work: Path) -> bool:
    """Whether `passphrase` is this release's key: its key check, else the first gated file decrypts."""
    if keycheck.matches(manifest.source_fingerprint, passphrase):
        return True
    if keycheck.differs(manifest.source_fingerprint, passphrase):
        return False
    first = next((rel for info in manifest.subsets.values() for rel in info.gated.values()), None)
    if first is None:
        return True
    try:
        decrypt_file(tree / first, work / "probe.jsonl.gz", passphrase=passphrase).unlink()
    except PassphraseError:
        return False
    return True


def _check_working_folder(tgt: Target, version: str) -> None:
    """A local folder whose branch holds `version` is what `load_dataset(folder, ...)` reads: check its files too."""
    folder = tgt.working_folder(version)
    if folder is None:
        return
    try:
        check_tree(folder)
    except ChecksumError as e:
        raise ChecksumError(
            f"{folder / e.path}",
            f"{e.message} (this working-folder file is what load_dataset({str(folder)!r}, ...) "
            f"reads); restore it with `git -C {folder} reset --hard {version}` or by rerunning the release",
        ) from None


def _check_loading(tgt: Target, version: str, manifest: ChecksumManifest, tree: Path) -> dict[str, int]:
    """`load_dataset` of every config as users load it: by repo id at the tag, or the downloaded tree (ModelScope)."""
    import datasets

    args = tgt.load_dataset_args(version)
    path, kwargs = args if args is not None else (str(tree), {})
    rows: dict[str, int] = {}
    for config, info in sorted(manifest.subsets.items()):
        try:
            ds = datasets.load_dataset(path, config, split=layout.SPLIT, **kwargs)
        except Exception as e:  # noqa: BLE001 — any loader failure is a verification failure
            raise VerifyError(f"config `{config}` does not load: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        if len(ds) != info.counts.records:
            raise VerifyError(
                f"config `{config}` has {len(ds)} rows; {layout.MANIFEST_FILE} says {info.counts.records}"
            )
        rows[config] = len(ds)
    return rows


def _check_gated(tree: Path, manifest: ChecksumManifest, passphrase: SecretStr, *, work: Path) -> int:
    if keycheck.differs(manifest.source_fingerprint, passphrase):
        raise PassphraseError(f"the passphrase does not match this release's source fingerprint; {KEY_HINT}")
    n = 0
    for config, info in sorted(manifest.subsets.items()):
        for which, rel in sorted(info.gated.items()):
            entry = manifest.files[rel]
            plain = decrypt_file(tree / rel, work / "plain.jsonl.gz", passphrase=passphrase)
            if entry.plaintext_sha256 and sha256_file(plain) != entry.plaintext_sha256:
                raise VerifyError(f"{rel}: decrypted content differs from {layout.MANIFEST_FILE}")
            with gzip.open(plain, "rb") as f:
                lines = sum(1 for line in f if line.strip())
            expected = info.counts.gated_unsafe if which == "unsafe" else info.counts.gated_default
            if lines != expected or (entry.records is not None and lines != entry.records):
                raise VerifyError(f"{rel}: {lines} instructions; {layout.MANIFEST_FILE} says {expected}")
            plain.unlink()
            n += 1
            log.info("%s: %s decrypted, %d instructions", config, which, lines)
    return n
