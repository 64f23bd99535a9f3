"""One rule for a release tree: publish, verify and recover accept and refuse the same trees, with the same line.

The rule (`lmsynth.tree.manifest_json`): a tree is MANIFEST.json plus exactly the files it lists, with their size
and sha256; only a `.git` at the root is not part of it. One tree is built by the real builder, changed in
each way a tree can be changed, and handed to the three verbs: `publish_tree` gets the changed folder, and
`verify` and `recover` get it as a tampered release (committed under a tag to a local target, which stores
what it is given).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from lmsynth import constants
from lmsynth.errors import ChecksumError
from lmsynth.recover import recover
from lmsynth.release.build import build_release
from lmsynth.release.publish import publish_tree
from lmsynth.release.verify import verify
from lmsynth.targets.local import LocalTarget
from lmsynth.testing import write_run_dir
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import GIT_DIR, check_tree, tree_files


KEY = SecretStr("tree-contract-key")
CONFIG = "gemma-3"
SHARD = layout.shard_path(CONFIG, 0, 1)


def _extra_file(tree: Path) -> str:
    (tree / "extra.txt").write_text("not in the manifest\n")
    return "extra.txt"


def _extra_dotfile(tree: Path) -> str:
    (tree / ".notes").write_text("a hidden note\n")
    return ".notes"


def _nested_dotfile(tree: Path) -> str:
    (tree / layout.DATA_DIR / CONFIG / ".DS_Store").write_bytes(b"\0\1")
    return f"{layout.DATA_DIR}/{CONFIG}/.DS_Store"


def _missing_file(tree: Path) -> str:
    (tree / layout.subset_card(CONFIG)).unlink()
    return layout.subset_card(CONFIG)


def _changed_byte(tree: Path) -> str:
    data = bytearray((tree / SHARD).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    (tree / SHARD).write_bytes(bytes(data))
    return SHARD


def _changed_manifest_entry(tree: Path) -> str:
    path = tree / layout.MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["files"][layout.INDEX_CARD]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return layout.INDEX_CARD


CHANGES: dict[str, tuple[Callable[[Path], str], str]] = {
    "extra file": (_extra_file, "not listed in MANIFEST.json"),
    "extra dotfile": (_extra_dotfile, "not listed in MANIFEST.json"),
    "nested dotfile": (_nested_dotfile, "not listed in MANIFEST.json"),
    "missing file": (_missing_file, "listed in MANIFEST.json but missing"),
    "changed byte": (_changed_byte, "sha256 does not match MANIFEST.json"),
    "changed manifest entry": (_changed_manifest_entry, "sha256 does not match MANIFEST.json"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release tree of the real v0.5 manifest cut to one subset, built once by `build_release --dry-run`."""
    root = tmp_path_factory.mktemp("project")
    data = yaml.safe_load((constants.RELEASE_DIR / "v0.5.yaml").read_text(encoding="utf-8"))
    data["subsets"] = [s for s in data["subsets"] if s["config"] == CONFIG]
    data["subsets"][0].update(records="runs/gemma-3", prepared="runs/prepared", pipelines=[])
    write_run_dir(root / "runs" / CONFIG, 12, seed=7, unsafe_n=2, prepared=root / "runs" / "prepared")
    (root / "v0.5.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    build_release(
        "v0.5",
        manifest_path=root / "v0.5.yaml",
        target=str(root / "hub"),
        runs_root=root,
        dry_run=True,
        out_dir=root / "tree",
        passphrase=KEY,
    )
    return root / "tree"


def _refusals(tree: Path, tmp_path: Path) -> dict[str, ChecksumError]:
    """What publish, verify and recover each say of `tree` (a `ChecksumError` each, or the test fails)."""
    out: dict[str, ChecksumError] = {}
    with pytest.raises(ChecksumError) as err:
        publish_tree(tree, to=str(tmp_path / "published"), tag="v0.5")
    out["publish"] = err.value
    assert not (tmp_path / "published").exists()  # refused before the target was touched
    hub = tmp_path / "hub"
    LocalTarget(hub).publish(tree, tag="v0.5", message="Release v0.5")  # a tampered release, as published
    with pytest.raises(ChecksumError) as err:
        verify("v0.5", target=str(hub), passphrase=KEY)
    out["verify"] = err.value
    with pytest.raises(ChecksumError) as err:
        recover(str(hub), revision="v0.5", source=None, out_dir=tmp_path / "recovered", passphrase=KEY)
    out["recover"] = err.value
    assert not (tmp_path / "recovered").exists()
    return out


@pytest.mark.parametrize("change", list(CHANGES))
def test_publish_verify_and_recover_refuse_the_same_file_with_the_same_line(
    built: Path, tmp_path: Path, change: str
) -> None:
    mutate, reason = CHANGES[change]
    tree = shutil.copytree(built, tmp_path / "tree")
    rel = mutate(tree)
    errors = _refusals(tree, tmp_path)
    lines = {verb: str(e) for verb, e in errors.items()}
    assert {e.path for e in errors.values()} == {rel}, lines
    assert len(set(lines.values())) == 1, lines  # the three verbs say the same thing
    line = lines["publish"]
    assert line.startswith(f"{rel}: {reason}") and "\n" not in line


def test_the_built_tree_passes_all_three(built: Path, tmp_path: Path) -> None:
    """The same three calls accept the tree as built, so the refusals above come from the changes alone."""
    tree = shutil.copytree(built, tmp_path / "tree")
    assert publish_tree(tree, to=str(tmp_path / "published"), tag="v0.5").created_commit
    hub = tmp_path / "hub"
    LocalTarget(hub).publish(tree, tag="v0.5", message="Release v0.5")
    assert verify("v0.5", target=str(hub), passphrase=KEY).rows == {CONFIG: 12}
    res = recover(str(hub), revision="v0.5", source=None, out_dir=tmp_path / "recovered", passphrase=KEY)
    assert res.report.subsets[CONFIG].public_rows == 12


def test_a_git_folder_at_the_root_is_not_part_of_the_tree(built: Path, tmp_path: Path) -> None:
    """The local target's folder is a git repository: its `.git` is the one entry the rule leaves out."""
    tree = shutil.copytree(built, tmp_path / "tree")
    (tree / GIT_DIR).mkdir()
    (tree / GIT_DIR / "HEAD").write_text("ref: refs/heads/main\n")
    assert GIT_DIR not in {p.split("/")[0] for p in tree_files(tree)}
    check_tree(tree)
    # Anywhere else, `.git` is a file like any other.
    nested = tree / layout.DATA_DIR / GIT_DIR
    nested.write_text("x")
    with pytest.raises(ChecksumError, match="not listed in MANIFEST.json") as err:
        check_tree(tree)
    assert err.value.path == f"{layout.DATA_DIR}/{GIT_DIR}"


@pytest.mark.parametrize("path", ["../outside.txt", "/etc/hostname", ".git/config", "MANIFEST.json", "data//x"])
def test_a_manifest_cannot_list_a_path_outside_the_tree(built: Path, tmp_path: Path, path: str) -> None:
    tree = shutil.copytree(built, tmp_path / "tree")
    manifest = json.loads((tree / layout.MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["files"][path] = manifest["files"][layout.INDEX_CARD]
    (tree / layout.MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ChecksumError) as err:
        check_tree(tree)
    assert err.value.path == layout.MANIFEST_FILE and "`files" in str(err.value) and "\n" not in str(err.value)
