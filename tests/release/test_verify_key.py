"""`lmsynth verify` without a key tries the key its --help describes, and says so when no key opens the release."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from lmsynth import constants
from lmsynth.passphrase import resolve_passphrase
from lmsynth.release.build import build_release
from lmsynth.release.verify import verify


def release(root: Path, passphrase: SecretStr) -> Path:
    build_release("v0.5", manifest_path=root / "v0.5.yaml", target=str(root / "hub"), passphrase=passphrase)
    return root / "hub"


def verify_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != constants.PASSPHRASE_ENV}
    return subprocess.run(
        [sys.executable, "-m", "lmsynth", "verify", "v0.5", "--from", "hub", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def sample_key() -> SecretStr:
    return resolve_passphrase(passphrase_file=None, source=str(constants.SAMPLE_SOURCE))


@pytest.mark.timeout(300)
def test_without_a_key_verify_decrypts_with_the_default_sources_key(small_project: Path) -> None:
    release(small_project, sample_key())
    res = verify_cli(small_project)
    assert res.returncode == 0, res.stderr
    assert "gated: 2" in res.stdout  # the default and the +unsafe file, decrypted and counted


@pytest.mark.timeout(300)
def test_without_a_key_that_opens_the_release_verify_says_so_in_one_line(small_project: Path) -> None:
    release(small_project, SecretStr("a key nobody gave to verify"))
    res = verify_cli(small_project)
    assert res.returncode == 0, res.stderr
    lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip().startswith("gated:")]
    assert lines == [
        "gated: not checked: the key of the bundled sample (the default --source) does not open this release: "
        "pass --passphrase-file, set $LMSYNTH_PASSPHRASE or give --source to decrypt the gated files"
    ]
    assert "gated: 0" not in res.stdout
    # A key that was given and does not match is still an error, not a note.
    key = small_project / "wrong.txt"
    key.write_text("not the key\n")
    wrong = verify_cli(small_project, "--passphrase-file", str(key))
    assert wrong.returncode != 0 and "does not match" in wrong.stderr


def test_the_library_names_a_missing_key_too(small_project: Path) -> None:
    release(small_project, SecretStr("k"))
    res = verify("v0.5", target=str(small_project / "hub"))
    assert res.gated_checked == 0 and not res.decrypted
    assert res.gated_unchecked is not None and res.gated_unchecked.startswith("no key: pass --passphrase-file")
