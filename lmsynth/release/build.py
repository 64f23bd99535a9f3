"""`build_release`: plan a release tree (Parquet, cards, figures, encrypted instructions), then publish it.

Plan, then apply. `plan_release` builds the whole tree in a staging folder outside the target, runs the
leak guard on it and returns a `ReleasePlan` (paths, digests, sizes, counts); only `build_release` writes to
a target, in the target's own all-or-nothing way. A bad record, a leak or a wrong passphrase therefore
stops the release before the target is touched.

Determinism: every public file is a function of the inputs (fixed Parquet schema and writer settings, no
timestamps, fixed figure size and metadata, canonical JSON), so the same inputs give a byte-identical public
tree. GnuPG output is not deterministic (fresh salt and session key), so the guarantee for gated files is
their decrypted content: MANIFEST.json records `plaintext_sha256`, and a re-release whose plaintext did not
change reuses the ciphertext already published under the tag, which makes re-releasing a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pydantic import Field, SecretStr

from lmsynth import constants, keycheck, project
from lmsynth.config import StrictModel
from lmsynth.crypto import encrypt_stream
from lmsynth.errors import (
    ConfigError,
    InputRecordError,
    ManifestError,
    MissingRunsError,
    PassphraseError,
    TagConflictError,
)
from lmsynth.faults import kill_point
from lmsynth.io import atomic_dir, atomic_path, parse_line, sha256_file
from lmsynth.outdir import apart, check_out
from lmsynth.prepare import PREPARED_MARKER
from lmsynth.records import PREPARED_INSTRUCTIONS, PREPARED_UNSAFE, RUN_INFO_FILE, InstructionRecord, read_run_info
from lmsynth.release import data_files, figures, heap
from lmsynth.release import dataset_cards as cards
from lmsynth.release.inputs import RunInput, exists, resolve_input
from lmsynth.release.leak_guard import GatedIndex, scan_tree
from lmsynth.release.release_yaml import ReleaseManifest, SubsetSpec, load_manifest
from lmsynth.scratch import scratch_dir
from lmsynth.targets import open_target
from lmsynth.targets.gated import publish_gated_repo
from lmsynth.targets.schemes import local_folder
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import (
    ChecksumManifest,
    FileEntry,
    SubsetCounts,
    SubsetInfo,
    SubsetInputs,
    write_manifest,
)


log = logging.getLogger(__name__)

FetchPrevious = Callable[[str], bytes | None]
ENCRYPT_THREADS = 2  # gated files gzipped and encrypted at once


class ReleasePlan(StrictModel):
    """A built, leak-checked release tree waiting in a staging folder."""

    version: str
    tree: Path
    files: dict[str, FileEntry]
    counts: dict[str, SubsetCounts]
    reused_ciphertexts: list[str] = Field(default_factory=list)
    leak_scanned_files: int
    gated_strings: int

    @property
    def total_bytes(self) -> int:
        """Size of the tree (MANIFEST.json excluded)."""
        return sum(f.size for f in self.files.values())


class ReleaseResult(StrictModel):
    """What `build_release` did."""

    version: str
    manifest: Path = Field(description="The release manifest that was read (the project's or the shipped one).")
    tag: str
    target: str | None
    dry_run: bool
    commit: str | None = None
    created_commit: bool = False
    moved_tag: bool = False
    out_dir: Path | None = Field(None, description="Where the built tree was kept (dry runs with `out_dir`).")
    files: int
    bytes: int
    counts: dict[str, SubsetCounts]
    reused_ciphertexts: list[str] = Field(default_factory=list)


def build_release(
    version: str,
    *,
    manifest_path: Path | str | None = None,
    target: str | None = None,
    out_dir: Path | str | None = None,
    dry_run: bool = False,
    force: bool = False,
    passphrase: SecretStr | None = None,
    records_overrides: Mapping[str, Path | str] | None = None,
    runs_root: str | Path | None = None,
    shard_bytes: int | None = None,
) -> ReleaseResult:
    """Build release `version` from its manifest and publish it to a target.

    Args:
        version: The version, e.g. `v0.5`; also the tag. Reads `release/<version>.yaml` by default.
        manifest_path: Another manifest file (its `version` must equal `version`).
        target: Target URI or a manifest target name (`local`, `hf`, `ms`); default: the manifest's.
        out_dir: Keep the built tree here (a dry run's artifact for `lmsynth publish`); replaced atomically.
        dry_run: Build and check everything, publish nothing.
        force: Move the tag when it already points at different content.
        passphrase: Encrypts the gated files.
        records_overrides: `{config: path or URL}` replacing a subset's `records:`.
        runs_root: Folder or URL (`hf://datasets/ORG/NAME@REV`) relative manifest paths resolve against.
        shard_bytes: Rotate Parquet shards at this size (default: `data_files.SHARD_BYTES`).

    Returns:
        The result: tag, commit (None for a dry run), counts, files.

    Raises:
        ManifestError / ConfigError: the manifest is invalid or names another version.
        InputRecordError: a record is malformed (file, line and field named).
        MissingRunsError: run folders are missing (names the subsets and the commands that make them).
        SourceError: a runs URL cannot be read (missing repo, revision or path, or no access).
        PassphraseError: no passphrase, or the previous release's files cannot be reused with it.
        LeakError: a public file contains gated text.
        TagConflictError: the tag exists with different content and `force` is off.
        TargetError: the published release could not be read (only a 404 means "no previous release"), or the
            target kept failing; nothing was published.
    """
    if not version:
        raise ConfigError("release", "version", "`version` can't be empty")
    manifest_path = Path(manifest_path) if manifest_path else project.find(f"release/{version}.yaml")
    manifest = load_manifest(manifest_path)
    log.info("release %s: manifest %s", version, manifest_path)
    if manifest.version != version:
        raise ConfigError(manifest_path, "version", f"is {manifest.version}, not {version}")
    uri = manifest.targets.resolve(target)
    shown_out = out_dir
    project_root = project.manifest_root(manifest_path)
    inputs = [manifest_path, *_local_inputs(manifest, records_overrides or {}, runs_root, project_root)]
    if out_dir is not None:
        out_dir = check_out(out_dir, kind="release tree", inputs=inputs, targets=[uri])
    folder = local_folder(uri)
    if not dry_run and folder is not None:
        apart(folder, inputs=inputs, what="target")
    tgt = open_target(uri)
    links = tgt.card_links(version)

    def previous(path: str) -> bytes | None:
        # None only when the target says the release or the file is absent; a read that failed is a TargetError
        # (a release that cannot read what it would replace must not re-encrypt and call the result different).
        return tgt.fetch_file(path, revision=version)

    with contextlib.ExitStack() as stack:
        # A target that can be locked (a local folder) is held from the first read of the published release to
        # the tag: a second release into it waits, then finds this one published (and reuses its files).
        if not dry_run:
            stack.enter_context(tgt.lock())
        if passphrase is not None and not force:
            prev = _previous_manifest(previous)
            if prev is not None and keycheck.differs(prev.source_fingerprint, passphrase):
                raise TagConflictError(
                    uri,
                    version,
                    f"tag `{version}` exists, encrypted with another key: this passphrase differs from the "
                    "published one; pass the published key (--passphrase-file, $LMSYNTH_PASSPHRASE or --source), "
                    "or --force to re-encrypt with this one",
                )
        # The staging tree and, for a Hub-gated repo, its plaintext JA instructions: scratch folders, which the
        # next lmsynth command removes if this one is killed.
        staging = stack.enter_context(scratch_dir(f"staging-{version}"))
        gated_plain = stack.enter_context(scratch_dir("gated-repo")) if manifest.gated_repo and not dry_run else None
        kill_point("release.staging", staging)
        plan = plan_release(
            manifest,
            tree=staging,
            project_root=project_root,
            passphrase=passphrase,
            records_overrides=records_overrides,
            runs_root=runs_root,
            previous=previous,
            link_base=links.link_base,
            load_path=links.load_path,
            revision=links.revision,
            shard_bytes=shard_bytes,
            keep_gated=gated_plain,
        )
        kill_point("release.planned")
        kept = None
        if out_dir is not None:
            with atomic_dir(out_dir) as tmp:
                shutil.copytree(staging, tmp, dirs_exist_ok=True)
            kept = Path(shown_out)
        common = {
            "version": version,
            "manifest": manifest_path,
            "tag": version,
            "target": uri,
            "dry_run": dry_run,
            "out_dir": kept,
            "files": len(plan.files) + 1,
            "bytes": plan.total_bytes,
            "counts": plan.counts,
            "reused_ciphertexts": plan.reused_ciphertexts,
        }
        if dry_run:
            return ReleaseResult(**common)
        pub = tgt.publish(staging, tag=version, message=f"Release {version}", force=force)
        if manifest.gated_repo is not None:
            _publish_gated_repo(manifest, gated_plain, version=version)
        return ReleaseResult(**common, commit=pub.commit, created_commit=pub.created_commit, moved_tag=pub.moved_tag)


def plan_release(
    manifest: ReleaseManifest,
    *,
    tree: Path,
    passphrase: SecretStr | None,
    records_overrides: Mapping[str, Path | str] | None = None,
    runs_root: str | Path | None = None,
    previous: FetchPrevious | None = None,
    link_base: str = "",
    load_path: str = ".",
    revision: str | None = None,
    shard_bytes: int | None = None,
    keep_gated: Path | None = None,
    project_root: Path | None = None,
) -> ReleasePlan:
    """Build the release tree of `manifest` into the empty folder `tree` and leak-check it.

    Args:
        manifest: The validated release manifest.
        tree: An empty staging folder (never the target).
        passphrase: Encrypts the gated files; required when any subset encrypts.
        records_overrides: `{config: path or URL}` replacing a subset's `records:` (relative: to the current folder).
        runs_root: What relative `records:`/`prepared:` paths of the manifest resolve against: a folder or an
            fsspec URL such as `hf://datasets/ORG/NAME@REV` (default: the current folder).
        previous: Reads a file of the release already published under this version, so unchanged gated
            plaintext reuses its ciphertext.
        link_base: Prefix of file links in the cards.
        load_path: What `load_dataset` is given in the cards' examples.
        revision: The `revision=` of the cards' examples.
        shard_bytes: Parquet shard rotation size.
        keep_gated: Keep the gated plaintexts (`.jsonl.gz`) here for a Hub-gated repo instead of deleting them.
        project_root: What the manifest's relative `pipelines:` resolve against (`project.manifest_root`);
            default: the project folder (`lmsynth.project`).

    Returns:
        The plan: every file with sha256 and size, counts, reused ciphertexts.
    """
    # 1. Check everything that can be checked before any work.
    known = {s.config for s in manifest.subsets}
    for config in records_overrides or {}:
        if config not in known:
            raise ManifestError("--records", config, None, f"no such subset; known: {', '.join(sorted(known))}")
    if passphrase is None and any(s.encrypt for s in manifest.subsets):
        raise PassphraseError(
            f"no passphrase: pass --passphrase-file, set ${constants.PASSPHRASE_ENV}, or give --source to derive it"
        )
    records, prepared = _resolve_inputs(manifest, records_overrides or {}, runs_root)
    for s in manifest.subsets:
        _check_finished_inputs(s, records[s.config], prepared[s.config])
        for p in s.pipelines:
            if not _project_file(p, project_root).exists():
                raise ManifestError("manifest", s.config, "pipelines", f"{p}: no such file or folder")
    prev_manifest = _previous_manifest(previous)

    key_matches = prev_manifest is not None and keycheck.matches(prev_manifest.source_fingerprint, passphrase)
    heap.fix_mmap_threshold()  # large freed blocks back to the system: the peak RSS stays bounded
    # The gated files are encrypted into `work` on `ENCRYPT_THREADS` threads (gzip and gpg run outside the GIL)
    # while the next subsets are read and the leak guard scans, and are moved into the tree once it is clean.
    with scratch_dir("gated") as work, ThreadPoolExecutor(ENCRYPT_THREADS) as encrypting:
        # 2. Public shards, gated plaintexts, figures: one streaming pass per subset.
        built: list[cards.SubsetCardData] = []
        infos: dict[str, SubsetInfo] = {}
        gated_entries: dict[str, FileEntry] = {}
        reused: list[str] = []
        jobs: list[tuple[str, Path, Future]] = []  # a gated file: its place in the tree, its ciphertext, its job
        index = GatedIndex()
        for spec in manifest.subsets:
            out = data_files.write_subset(
                spec,
                records=records[spec.config],
                tree=tree,
                shard_bytes=shard_bytes or data_files.SHARD_BYTES,
            )
            fig_paths = [
                layout.figure_path(spec.config, figures.SCORE_FIGURE),
                layout.figure_path(spec.config, figures.LENGTH_FIGURE),
            ]
            figures.plot_scores(tree / fig_paths[0], hist=out.score_hist, failed=out.failed_scores, title=spec.config)
            figures.plot_lengths(
                tree / fig_paths[1], hist=out.length_hist, bin_width=data_files.LENGTH_BIN, title=spec.config
            )
            # +unsafe holds every default line too: index the strings once, from the larger set.
            indexed = out.gated.get("unsafe", out.gated.get("default"))
            for texts in indexed.texts() if indexed is not None else ():  # a row group's texts at a time
                for text in texts:
                    index.add(text)
            if prepared[spec.config] is not None:
                _index_prepared(index, prepared[spec.config])
            if spec is manifest.subsets[-1]:
                # The index's sorting (its memory peak) before this subset's encryption starts, not beside it.
                index.prepare()
            gated_paths: dict[str, str] = {}
            for which, lines in out.gated.items():
                rel = layout.gated_path(spec.config, unsafe=which == "unsafe")
                gated_paths[which] = rel
                encrypted = work / f"{len(jobs)}.gpg"
                job = encrypting.submit(
                    _encrypt_or_reuse,
                    lines.chunks,
                    encrypted,
                    rel=rel,
                    records=len(lines),
                    passphrase=passphrase,
                    previous=previous,
                    prev=prev_manifest if key_matches else None,
                    keep=keep_gated / rel.removesuffix(".gpg") if keep_gated is not None else None,
                )
                jobs.append((rel, encrypted, job))
            built.append(
                cards.SubsetCardData(
                    spec=spec,
                    counts=out.counts,
                    shards=out.shards,
                    figures=fig_paths,
                    gated_paths=list(gated_paths.values()),
                    shard_bytes=sum((tree / p).stat().st_size for p in out.shards),
                    arrow_bytes=out.arrow_bytes,
                )
            )
            infos[spec.config] = SubsetInfo(
                title=spec.title,
                generator=spec.generator,
                judge=spec.judge,
                license=spec.license,
                counts=out.counts,
                shards=out.shards,
                gated=gated_paths,
                inputs=SubsetInputs(
                    records=records[spec.config].ref,
                    prepared=prepared[spec.config].ref if prepared[spec.config] is not None else None,
                ),
            )
        # 3. Pipeline definitions, cards.
        pipeline_hashes = _copy_pipelines(manifest, tree, project_root)
        texts = cards.render_cards(manifest, built, link_base=link_base, load_path=load_path, revision=revision)
        for rel, text in texts.items():
            (tree / rel).write_text(text, encoding="utf-8")

        # 4. Leak guard over every non-encrypted file, before MANIFEST.json and before any target sees it.
        # One row group at a time while the gated files are still encrypting (bounds the memory of the overlap).
        scanned = scan_tree(tree, index, narrow=lambda: not all(job.done() for _, _, job in jobs))
        for rel, encrypted, job in jobs:
            gated_entries[rel], was_reused = job.result()
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(encrypted, tree / rel)
            if was_reused:
                reused.append(rel)
            kill_point("release.encrypted")

    # 5. MANIFEST.json: every file of the tree, the gated ones with their plaintext digest.
    checksum = write_manifest(
        tree,
        version=manifest.version,
        subsets=infos,
        pipelines=pipeline_hashes,
        source_fingerprint=_key_check(prev_manifest, passphrase, key_matches),
        known=gated_entries,
    )
    return ReleasePlan(
        version=manifest.version,
        tree=tree,
        files=checksum.files,
        counts={k: v.counts for k, v in infos.items()},
        reused_ciphertexts=reused,
        leak_scanned_files=scanned,
        gated_strings=len(index),
    )


# Private helpers


def _check_finished_inputs(spec: SubsetSpec, records: RunInput, prepared: RunInput | None) -> None:
    """Refuse what a killed or running command leaves: a run folder without run.json, a prepared one without _COMPLETE.

    Releasing such a folder would publish a part of the data as if it were the whole. `run.json` is read
    through `read_run_info`, so a file that is not one is refused as well, naming its field.
    """
    if records.is_dir() and not records.child(RUN_INFO_FILE).is_file():
        raise InputRecordError(
            records,
            None,
            None,
            f"records of subset `{spec.config}`: not a finished run folder (no {RUN_INFO_FILE}: the run was "
            f"killed, is still running, or the folder is a partial copy); rerun `lmsynth run PIPELINE --input "
            f"PREPARED --out {records}` to finish it",
        )
    if records.is_dir():
        with records.child(RUN_INFO_FILE).open() as f:
            read_run_info(records, text=f.read().decode("utf-8"))
    if prepared is not None and not prepared.child(PREPARED_MARKER).is_file():
        raise ManifestError(
            "manifest",
            spec.config,
            "prepared",
            f"{prepared}: not a finished prepare output (no {PREPARED_MARKER}); rerun "
            f"`lmsynth prepare --source SRC --out {prepared}` to finish it",
        )


def _publish_gated_repo(manifest: ReleaseManifest, plain_tree: Path, *, version: str) -> None:
    """Send the plaintext JA instructions to the manifest's gated repo (gating on before the upload)."""
    lic = manifest.instructions_license
    metadata = {"license": "other", "license_name": lic.name, "license_link": lic.link, "language": ["ja"]}
    publish_gated_repo(plain_tree, spec=manifest.gated_repo, tag=version, metadata=metadata)


def _project_file(path: Path, root: Path | None) -> Path:
    """A manifest's pipeline path: relative to the manifest's project folder, else by the project-folder rule."""
    if path.is_absolute():
        return path
    if root is not None and (root / path).exists():
        return root / path
    return project.find(path)


def _previous_manifest(previous: FetchPrevious | None) -> ChecksumManifest | None:
    if previous is None:
        return None
    data = previous(layout.MANIFEST_FILE)
    if data is None:
        return None
    try:
        return ChecksumManifest.model_validate_json(data, strict=True)
    except ValueError:
        log.warning("the previous %s does not validate; not reusing its files", layout.MANIFEST_FILE)
        return None


def _key_check(prev: ChecksumManifest | None, passphrase: SecretStr | None, key_matches: bool) -> str | None:
    """MANIFEST.json's key check: the published one when the key is the same (an unchanged re-release)."""
    if passphrase is None:
        return None
    return prev.source_fingerprint if key_matches and prev is not None else keycheck.make(passphrase)


def _encrypt_or_reuse(
    plaintext: Callable[[], Iterator[bytes]],
    dst: Path,
    *,
    rel: str,
    records: int,
    passphrase: SecretStr,
    previous: FetchPrevious | None,
    prev: ChecksumManifest | None,
    keep: Path | None = None,
) -> tuple[FileEntry, bool]:
    """Stream the gzipped `plaintext` into gpg (no plaintext file); reuse the published ciphertext if unchanged.

    `prev` is the published MANIFEST.json when it was encrypted with this same key, else None. When it lists
    this file, the plaintext digest is computed first (no encryption) so an unchanged file costs no gpg run.
    `keep`: also write the gzipped plaintext there (a Hub-gated repo's copy).
    """
    if keep is not None:
        with atomic_path(keep, private=True) as tmp, open(tmp, "wb") as f:  # gated plaintext
            for chunk in data_files.gz_bytes(plaintext()):
                f.write(chunk)
    old = prev.files.get(rel) if prev is not None else None
    if old is not None and previous is not None:
        plain = hashlib.sha256()
        for chunk in data_files.gz_bytes(plaintext()):
            plain.update(chunk)
        if plain.hexdigest() == old.plaintext_sha256:
            data = previous(rel)
            if data is not None and hashlib.sha256(data).hexdigest() == old.sha256:
                with atomic_path(dst) as tmp:
                    tmp.write_bytes(data)
                return old, True
    plain = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for chunk in data_files.gz_bytes(plaintext()):
            plain.update(chunk)
            yield chunk

    encrypt_stream(chunks(), dst, passphrase=passphrase)
    entry = FileEntry(
        sha256=sha256_file(dst), size=dst.stat().st_size, plaintext_sha256=plain.hexdigest(), records=records
    )
    return entry, False


def _index_prepared(index: object, prepared: RunInput) -> None:
    for name in (PREPARED_INSTRUCTIONS, PREPARED_UNSAFE):
        path = prepared.child(name)
        if path.is_file():
            with path.open() as f:
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        index.add(parse_line(line, InstructionRecord, path=path, lineno=lineno).instruction)


def _resolve_inputs(
    manifest: ReleaseManifest, overrides: Mapping[str, Path | str], runs_root: str | Path | None
) -> tuple[dict[str, RunInput], dict[str, RunInput | None]]:
    """Every subset's records and prepared folder, resolved (Hub URLs pinned to a commit); all missing ones named."""
    records: dict[str, RunInput] = {}
    prepared: dict[str, RunInput | None] = {}
    missing: list[SubsetSpec] = []
    for s in manifest.subsets:
        if s.config in overrides:
            records[s.config] = resolve_input(overrides[s.config])
        else:
            records[s.config] = resolve_input(s.records, root=runs_root)
        if not exists(records[s.config]):
            missing.append(s)
        prepared[s.config] = resolve_input(s.prepared, root=runs_root) if s.prepared is not None else None
    if missing:
        raise MissingRunsError(
            [(s.config, str(records[s.config])) for s in missing], commands=[_run_command(s) for s in missing]
        )
    for s in manifest.subsets:
        p = prepared[s.config]
        if p is not None and not p.is_dir():
            raise ManifestError("manifest", s.config, "prepared", f"{p}: no such folder")
    return records, prepared


def _local_inputs(
    manifest: ReleaseManifest,
    overrides: Mapping[str, Path | str],
    runs_root: str | Path | None,
    project_root: Path | None,
) -> list[Path | str]:
    """The local files and folders a release reads (run and prepared folders, shipped pipelines)."""
    remote_root = runs_root is not None and "://" in str(runs_root)
    found: list[Path | str] = []
    for s in manifest.subsets:
        found += [_project_file(p, project_root) for p in s.pipelines]
        for value, root in ((overrides.get(s.config), None), (s.records, runs_root), (s.prepared, runs_root)):
            if value is not None and "://" not in str(value) and (root is None or not remote_root):
                found.append(resolve_input(value, root=root).path)
    return found


def _run_command(spec: SubsetSpec) -> str:
    """The command that makes a subset's run folder (its shipped pipeline file)."""
    pipeline = next((str(p) for p in spec.pipelines if str(p).endswith((".yaml", ".yml"))), "pipelines/PIPELINE.yaml")
    return f"lmsynth run {pipeline} --input {spec.prepared or 'runs/prepared'} --out {spec.records}"


def _copy_pipelines(manifest: ReleaseManifest, tree: Path, root: Path | None) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for spec in manifest.subsets:
        for src in (_project_file(p, root) for p in spec.pipelines):
            items = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
            for item in items:
                rel = f"{layout.PIPELINES_DIR}/{item.relative_to(src.parent).as_posix()}"
                dst = tree / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(item, dst)
                hashes[rel] = sha256_file(dst)
    return hashes
