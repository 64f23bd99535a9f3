"""The reviewed release flow of the workflow: `release --dry-run --out`, then `publish` those bytes, then `verify`."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from lmsynth.cli.commands import app
from lmsynth.io import sha256_file
from tests.release.conftest import PASSPHRASE, Project


def test_dry_run_tree_published_as_is_then_verified_by_target_name(project: Project, tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    key.write_text(PASSPHRASE + "\n", encoding="utf-8")
    # Name a local target in the manifest, so `--to local` / `--from local` resolve through it.
    data = yaml.safe_load(project.manifest.read_text(encoding="utf-8"))
    data["targets"] = {"local": str(tmp_path / "named-hub"), "default": "local"}
    project.manifest.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    runner = CliRunner()
    common = ["--manifest", str(project.manifest)]

    plan = runner.invoke(
        app, ["release", "v0.5", "--dry-run", "--out", str(tmp_path / "tree"), "--passphrase-file", str(key), *common]
    )
    assert plan.exit_code == 0, plan.output
    assert not (tmp_path / "named-hub").exists()
    built = {p.relative_to(tmp_path / "tree"): sha256_file(p) for p in (tmp_path / "tree").rglob("*") if p.is_file()}

    pub = runner.invoke(app, ["publish", str(tmp_path / "tree"), "--to", "local", "--tag", "v0.5", *common])
    assert pub.exit_code == 0, pub.output
    assert "Published v0.5" in pub.output
    hub = tmp_path / "named-hub"
    published = {p.relative_to(hub): sha256_file(p) for p in hub.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert published == built

    again = runner.invoke(app, ["publish", str(tmp_path / "tree"), "--to", "local", "--tag", "v0.5", *common])
    assert again.exit_code == 0 and "Unchanged v0.5" in again.output

    ver = runner.invoke(app, ["verify", "v0.5", "--from", "local", "--passphrase-file", str(key), *common])
    assert ver.exit_code == 0, ver.output
    assert "Verified v0.5" in ver.output


def test_publish_refuses_a_tampered_tree(project: Project, tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    key.write_text(PASSPHRASE + "\n", encoding="utf-8")
    runner = CliRunner()
    tree = tmp_path / "tree"
    args = ["--manifest", str(project.manifest), "--passphrase-file", str(key)]
    assert runner.invoke(app, ["release", "v0.5", "--dry-run", "--out", str(tree), *args]).exit_code == 0
    (tree / "README.md").write_text("tampered\n", encoding="utf-8")
    res = runner.invoke(app, ["publish", str(tree), "--to", str(tmp_path / "hub2"), "--tag", "v0.5"])
    assert res.exit_code != 0
    assert "README.md" in str(res.exception)
    assert not (tmp_path / "hub2").exists()
