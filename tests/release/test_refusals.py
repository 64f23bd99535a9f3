"""What a release refuses, and the one-line errors of the release, verify and recover commands."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from lmsynth import keycheck
from lmsynth.errors import ChecksumError, InputRecordError, ManifestError, TagConflictError, TargetError
from lmsynth.records import RUN_INFO_FILE
from lmsynth.release.build import build_release
from lmsynth.release.verify import verify
from lmsynth.targets.local import LocalTarget
from lmsynth.tree import layout


KEY = SecretStr("the-published-key")


def _release(root: Path, **kw: object):  # noqa: ANN202
    kw.setdefault("passphrase", KEY)
    return build_release("v0.5", manifest_path=root / "v0.5.yaml", target=str(root / "hub"), **kw)


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmsynth", *args], cwd=root, capture_output=True, text=True, timeout=300
    )


class TestIncompleteInputs:
    def test_run_folder_without_run_json_is_refused_naming_it_and_the_command(self, small_project: Path) -> None:
        (small_project / "runs" / "gemma-3" / RUN_INFO_FILE).unlink()
        with pytest.raises(InputRecordError) as info:
            _release(small_project)
        msg = str(info.value)
        assert msg.startswith("runs/gemma-3: records of subset `gemma-3`: not a finished run folder (no run.json")
        assert "lmsynth run" in msg and "--out runs/gemma-3" in msg and "\n" not in msg
        assert not (small_project / "hub").exists()

    def test_run_json_that_is_not_one_is_refused_naming_the_field(self, small_project: Path) -> None:
        path = small_project / "runs" / "gemma-3" / RUN_INFO_FILE
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "counts"}))
        with pytest.raises(InputRecordError) as info:
            _release(small_project, dry_run=True)
        assert str(info.value).startswith("runs/gemma-3/run.json: field `counts`: Field required")

    def test_prepared_folder_without_complete_marker_is_refused(self, small_project: Path) -> None:
        (small_project / "runs" / "prepared" / "_COMPLETE").unlink()
        with pytest.raises(ManifestError) as info:
            _release(small_project, dry_run=True)
        msg = str(info.value)
        assert "`subsets[gemma-3].prepared`" in msg and "runs/prepared: not a finished prepare output" in msg
        assert "lmsynth prepare" in msg and "--out runs/prepared" in msg

    def test_a_single_records_file_needs_no_run_json(self, small_project: Path) -> None:
        shard = next((small_project / "runs" / "gemma-3" / "records").glob("*.jsonl"))
        res = _release(small_project, dry_run=True, records_overrides={"gemma-3": shard})
        assert res.counts["gemma-3"].records == 12


class TestKeyCheck:
    def test_manifest_holds_a_slow_salted_check_not_a_fast_hash(self, small_project: Path) -> None:
        _release(small_project)
        check = json.loads((small_project / "hub" / layout.MANIFEST_FILE).read_text())["source_fingerprint"]
        assert check.startswith("scrypt$ln=15,r=8,p=1$") and keycheck.matches(check, KEY)
        fast = hashlib.sha256(b"lmsynth-source-fingerprint-v1\x1f" + b"the-published-key").hexdigest()
        assert fast not in check and not keycheck.matches(check, SecretStr("guess"))

    def test_re_release_keeps_the_published_check(self, small_project: Path) -> None:
        first = _release(small_project)
        before = (small_project / "hub" / layout.MANIFEST_FILE).read_bytes()
        second = _release(small_project)
        assert second.commit == first.commit and not second.created_commit
        assert (small_project / "hub" / layout.MANIFEST_FILE).read_bytes() == before

    def test_another_passphrase_is_told_it_differs_from_the_published_key(self, small_project: Path) -> None:
        first = _release(small_project)
        with pytest.raises(TagConflictError) as info:
            _release(small_project, passphrase=SecretStr("another-key"))
        msg = str(info.value)
        assert "this passphrase differs from the published one" in msg and "--force" in msg
        assert "another-key" not in msg and "the-published-key" not in msg
        forced = _release(small_project, passphrase=SecretStr("another-key"), force=True)
        assert forced.moved_tag and forced.commit != first.commit
        verify("v0.5", target=str(small_project / "hub"), passphrase=SecretStr("another-key"))

    def test_legacy_fast_check_is_ignored(self) -> None:
        legacy = hashlib.sha256(b"x").hexdigest()
        assert not keycheck.matches(legacy, KEY) and not keycheck.differs(legacy, KEY)
        assert not keycheck.differs(None, KEY) and keycheck.differs(keycheck.make(KEY), SecretStr("other"))


class TestLocalTargetErrors:
    def test_recover_from_a_missing_folder_is_one_line(self, tmp_path: Path) -> None:
        proc = _cli(tmp_path, "recover", "--from", str(tmp_path / "nonexistent" / "hub"), "--revision", "v0.5",
                    "--out", "rec")  # fmt: skip
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"Error: {tmp_path / 'nonexistent' / 'hub'}: no such folder")
        assert not (tmp_path / "rec").exists()

    def test_release_to_a_regular_file_is_one_line(self, small_project: Path) -> None:
        (small_project / "afile").write_text("not a folder")
        proc = _cli(small_project, "release", "v0.5", "--manifest", "v0.5.yaml", "--to", "afile")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("Error: afile: is a file, not a folder")
        assert (small_project / "afile").read_text() == "not a folder"

    def test_download_from_a_folder_that_is_no_repository(self, tmp_path: Path) -> None:
        (tmp_path / "plain").mkdir()
        with pytest.raises(TargetError, match="not a release folder"):
            LocalTarget(tmp_path / "plain").download("v0.5", tmp_path / "out")

    def test_git_failure_is_one_clean_line(self, small_project: Path) -> None:
        _release(small_project)
        objects = small_project / "hub" / ".git" / "objects"
        shutil.rmtree(objects)
        objects.write_text("broken")  # a repository git cannot write to
        with pytest.raises(TargetError) as info:
            _release(small_project, passphrase=SecretStr("k2"), force=True)
        msg = str(info.value)
        assert msg.startswith(f"{small_project / 'hub'}: git could not ") and msg.endswith("rerun to repair")
        assert "\n" not in msg and "fatal:" not in msg


class TestVerifyWhatUsersLoad:
    def test_changed_working_folder_file_fails_verify_and_a_rerun_repairs_it(self, small_project: Path) -> None:
        _release(small_project)
        hub = small_project / "hub"
        shard = next((hub / "data" / "gemma-3").glob("*.parquet"))
        other = next((hub / "data" / "gemma-3").glob("*.parquet")).read_bytes()
        shard.write_bytes(other[:-40] + b"\0" * 40)
        with pytest.raises(ChecksumError) as info:
            verify("v0.5", target=str(hub))
        msg = str(info.value)
        assert msg.startswith(f"{shard}:") and "load_dataset" in msg and "git -C" in msg
        _release(small_project)  # the rerun is a no-op that resets the working folder
        assert verify("v0.5", target=str(hub)).rows == {"gemma-3": 12}

    def test_an_extra_shard_in_the_working_folder_fails_verify(self, small_project: Path) -> None:
        _release(small_project)
        hub = small_project / "hub"
        shard = next((hub / "data" / "gemma-3").glob("*.parquet"))
        (shard.parent / "train-extra.parquet").write_bytes(shard.read_bytes())
        with pytest.raises(ChecksumError, match="not listed in MANIFEST.json"):
            verify("v0.5", target=str(hub))
