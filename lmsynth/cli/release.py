"""CLI commands: `lmsynth release` and `lmsynth verify`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from lmsynth import constants, project
from lmsynth.cli.app import (
    DryRunOpt,
    ForceOpt,
    FromOpt,
    PassphraseFileOpt,
    SourceOpt,
    TargetOpt,
    VersionArg,
    app,
    out,
)
from lmsynth.errors import LmsynthError, ManifestError


log = logging.getLogger(__name__)


ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="Release manifest (default: release/<VERSION>.yaml of the project folder, else the shipped one).",
    ),
]
RecordsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--records", help="CONFIG=PATH: take a subset's records from PATH or a URL (hf://datasets/...) (repeatable)."
    ),
]
RunsOpt = Annotated[
    str | None,
    typer.Option(
        "--runs",
        help="Where the manifest's relative records:/prepared: paths live: a folder or a URL such as "
        "hf://datasets/ORG/NAME@REVISION (default: the current folder).",
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Also keep the built tree in this folder (e.g. a dry run's artifact).")
]


@app.command(
    "release",
    epilog="Examples:\n\n  lmsynth release v0.5 --dry-run --out build/v0.5\n\n"
    "  lmsynth release v0.5 --to hub --records gemma-3=runs/gemma-3 --passphrase-file key.txt\n\n"
    "  lmsynth release v0.5 --runs hf://datasets/ORG/lmsynth-runs@main --dry-run --out build/v0.5",
)
def release_cmd(
    version: VersionArg,
    to: TargetOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    manifest: ManifestOpt = None,
    records: RecordsOpt = None,
    runs: RunsOpt = None,
    out_dir: OutOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    source: SourceOpt = None,
) -> None:
    """Build release VERSION (Parquet, cards, figures, encrypted JA instructions, MANIFEST.json) and publish it."""
    from lmsynth.passphrase import resolve_passphrase
    from lmsynth.progress import enabled
    from lmsynth.release.build import build_release

    passphrase = resolve_passphrase(passphrase_file=passphrase_file, source=source or str(constants.SAMPLE_SOURCE))
    with enabled():
        res = build_release(
            version,
            manifest_path=manifest,
            target=to,
            out_dir=out_dir,
            dry_run=dry_run,
            force=force,
            passphrase=passphrase,
            records_overrides=_parse_records(records or []),
            runs_root=runs,
        )
    counts = ", ".join(f"{k}={v.records:,}" for k, v in res.counts.items())
    status = "Planned" if res.dry_run else ("Released" if res.created_commit or res.moved_tag else "Unchanged")
    fields = {"manifest": res.manifest, "tag": res.tag, "target": res.target, "commit": res.commit or "-"}
    fields["files"] = res.files
    out.result(f"{status} {version}", **fields, bytes=f"{res.bytes:,}", records=counts, tree=res.out_dir or "-")


@app.command("verify", epilog="Examples:\n\n  lmsynth verify v0.5 --from hub --passphrase-file key.txt")
def verify_cmd(
    version: VersionArg,
    from_: FromOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    source: SourceOpt = None,
    manifest: ManifestOpt = None,
) -> None:
    """Check release VERSION: files against MANIFEST.json, load_dataset per config, and decryption with the key.

    \b
    The key: --passphrase-file, else $LMSYNTH_PASSPHRASE, else derived from --source (default: the bundled
    sample). A key nobody gave that does not open the release leaves the gated files unchecked, and says so.
    """
    from lmsynth.passphrase import resolve_passphrase
    from lmsynth.release.verify import verify

    given = passphrase_file is not None or source is not None or constants.passphrase_from_env() is not None
    if given:
        passphrase, default_key = resolve_passphrase(passphrase_file=passphrase_file, source=source), None
    else:  # the key --help describes: derived from the default source, the bundled sample
        default_key = "the key of the bundled sample (the default --source)"
        try:
            passphrase = resolve_passphrase(passphrase_file=None, source=str(constants.SAMPLE_SOURCE))
        except LmsynthError as e:
            log.debug("no key from the bundled sample: %s", e)
            passphrase = None
    target = _resolve_target(version, from_, manifest)
    res = verify(version, target=target, passphrase=passphrase, default_key=default_key)
    rows = ", ".join(f"{k}={v:,}" for k, v in res.rows.items())
    gated = res.gated_checked if res.gated_unchecked is None else f"not checked: {res.gated_unchecked}"
    out.result(f"Verified {version}", target=res.target, files=res.files_checked, rows=rows, gated=gated)


@app.command(
    "publish",
    epilog="Examples:\n\n  lmsynth release v0.5 --dry-run --out build/v0.5\n\n"
    "  lmsynth publish build/v0.5 --to hf --tag v0.5",
)
def publish_cmd(
    tree: Annotated[Path, typer.Argument(help="A built release tree (MANIFEST.json at its root).")],
    tag: Annotated[str, typer.Option("--tag", help="Version tag to create, e.g. v0.5.")],
    to: TargetOpt = None,
    force: ForceOpt = False,
    manifest: ManifestOpt = None,
) -> None:
    """Publish an already-built release tree exactly as it is (checked against its MANIFEST.json first), then tag it.

    \b
    This is the second half of a reviewed release: `release --dry-run --out DIR` builds and checks the tree,
    `publish DIR` uploads those very bytes. Target names (local, hf, ms) come from release/<TAG>.yaml.
    """
    from lmsynth.release.publish import publish_tree

    res = publish_tree(tree, to=_resolve_target(tag, to, manifest), tag=tag, force=force)
    status = "Published" if res.created_commit or res.moved_tag else "Unchanged"
    out.result(f"{status} {tag}", target=res.target, commit=res.commit or "-")


# Private helpers


def _resolve_target(version: str, name: str | None, manifest: Path | None) -> str:
    """A target URI from `--to/--from`: a manifest name (local, hf, ms) or a URI; default: the manifest's."""
    from lmsynth.release.release_yaml import TARGET_NAMES, load_manifest

    if name is not None and name not in TARGET_NAMES:
        return name

    return load_manifest(manifest or project.find(f"release/{version}.yaml")).targets.resolve(name)


def _parse_records(items: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items:
        config, sep, path = item.partition("=")
        if not sep or not config or not path:
            raise ManifestError("--records", None, None, f"expected CONFIG=PATH, got {item!r}")
        parsed[config] = path
    return parsed
