"""Gathering shard run folders: equal to the unsharded run, and refusals that name the shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmsynth.cli.commands import app
from lmsynth.errors import InputRecordError, ShardSetError
from lmsynth.pipeline.output.gather import gather
from lmsynth.pipeline.shard import SHARD_FILE
from lmsynth.pipeline.telemetry.report_files import read_report
from lmsynth.records import RUN_INFO_FILE, RUN_RECORDS_DIR, RUN_UNSAFE_DIR, iter_synth_records
from lmsynth.testing import write_prepared_dir
from tests.scale.helpers import make_run, split_run


@pytest.fixture
def whole(tmp_path: Path) -> Path:
    return make_run(tmp_path / "whole", 60, unsafe_n=5)


@pytest.fixture
def shards(whole: Path, tmp_path: Path) -> list[Path]:
    return split_run(whole, tmp_path / "shards", 3)


def ids(run: Path, sub: str = RUN_RECORDS_DIR) -> list[str]:
    return [r.conversation_id for r in iter_synth_records(run / sub)]


class TestGatherEqualsUnsharded:
    def test_input_order_reproduces_the_whole_run(self, whole: Path, shards: list[Path], tmp_path: Path) -> None:
        prepared = write_prepared_dir(tmp_path / "prepared", 60, unsafe_n=5)
        res = gather(list(reversed(shards)), out_dir=tmp_path / "out", input_dir=prepared)
        assert res.order == "input"
        assert (res.shards, res.records, res.unsafe) == (3, 60, 5)
        for sub in (RUN_RECORDS_DIR, RUN_UNSAFE_DIR):
            assert list(iter_synth_records(tmp_path / "out" / sub)) == list(iter_synth_records(whole / sub))

    def test_records_are_copied_byte_for_byte(self, whole: Path, shards: list[Path], tmp_path: Path) -> None:
        prepared = write_prepared_dir(tmp_path / "prepared", 60, unsafe_n=5)
        gather(shards, out_dir=tmp_path / "out", input_dir=prepared)
        got = (tmp_path / "out" / RUN_RECORDS_DIR / "part-00000.jsonl").read_text()
        assert got == "".join(r.model_dump_json() + "\n" for r in iter_synth_records(whole))

    def test_without_input_order_is_by_conversation_id(self, whole: Path, shards: list[Path], tmp_path: Path) -> None:
        res = gather(shards, out_dir=tmp_path / "out")
        assert res.order == "conversation_id"
        assert ids(tmp_path / "out") == sorted(ids(whole))

    def test_recorded_input_is_used(self, whole: Path, tmp_path: Path) -> None:
        prepared = write_prepared_dir(tmp_path / "prepared", 60, unsafe_n=5)
        shards = split_run(whole, tmp_path / "recorded", 3, input_dir=prepared)
        assert gather(shards, out_dir=tmp_path / "out").order == "input"
        assert ids(tmp_path / "out") == ids(whole)

    def test_run_info_and_report_are_merged(self, whole: Path, shards: list[Path], tmp_path: Path) -> None:
        gather(shards, out_dir=tmp_path / "out")
        info = json.loads((tmp_path / "out" / RUN_INFO_FILE).read_text())
        # The whole run's identity (from shard.json), not a slice's; totals summed; no shard marker left.
        want = json.loads((whole / RUN_INFO_FILE).read_text())
        assert info["fingerprint"] == want["fingerprint"]
        assert info["counts"] == want["counts"] and info["counts"]["instructions"] == 60
        assert not (tmp_path / "out" / "shard.json").exists()
        rep = read_report(tmp_path / "out")
        shard_reps = [read_report(d) for d in shards]
        assert rep.records == 60 and rep.runs == 3
        assert rep.output_tokens == sum(r.output_tokens for r in shard_reps)
        assert rep.wall_time_s == max(r.wall_time_s for r in shard_reps)

    def test_output_replaces_an_old_folder_whole(self, shards: list[Path], tmp_path: Path) -> None:
        out = tmp_path / "out"
        (out / RUN_RECORDS_DIR).mkdir(parents=True)
        (out / RUN_RECORDS_DIR / "records-00099.jsonl").write_text("stale\n")
        (out / "run.json").write_text("{}\n")  # an earlier run folder (made before the output marker)
        gather(shards, out_dir=out)
        assert sorted(p.name for p in (out / RUN_RECORDS_DIR).iterdir()) == ["part-00000.jsonl"]


class TestRefusals:
    def test_missing_shard_is_named(self, shards: list[Path], tmp_path: Path) -> None:
        with pytest.raises(ShardSetError, match=r"missing shard 2/3 \(got 2 of 3\)") as err:
            gather([shards[0], shards[2]], out_dir=tmp_path / "out")
        assert err.value.reason == "missing" and err.value.shards == ["2/3"]
        assert not (tmp_path / "out").exists()

    def test_duplicated_shard_is_named(self, shards: list[Path], tmp_path: Path) -> None:
        copy = shutil.copytree(shards[1], tmp_path / "again")
        with pytest.raises(ShardSetError, match="duplicated shard: 2/3 in") as err:
            gather([*shards, copy], out_dir=tmp_path / "out")
        assert set(err.value.shards) == {str(shards[1]), str(copy)}

    def test_same_shard_folder_given_twice_is_named(self, shards: list[Path], tmp_path: Path) -> None:
        with pytest.raises(ShardSetError, match=f"shard folder {shards[1]} is given twice") as err:
            gather([shards[0], shards[1], shards[1]], out_dir=tmp_path / "out")
        assert err.value.reason == "duplicated" and err.value.shards == [str(shards[1])]
        assert not (tmp_path / "out").exists()

    def test_unfinished_shard_is_named(self, shards: list[Path], tmp_path: Path) -> None:
        (shards[2] / RUN_INFO_FILE).unlink()
        with pytest.raises(ShardSetError, match="unfinished shard run") as err:
            gather(shards, out_dir=tmp_path / "out")
        assert err.value.shards == [str(shards[2])]

    def test_other_fingerprint_is_named(self, shards: list[Path], tmp_path: Path) -> None:
        info = json.loads((shards[0] / SHARD_FILE).read_text())
        (shards[0] / SHARD_FILE).write_text(json.dumps(dict(info, fingerprint="f" * 64)))
        with pytest.raises(ShardSetError, match="different pipeline/config fingerprints") as err:
            gather(shards, out_dir=tmp_path / "out")
        assert err.value.reason == "mismatch"
        assert f"{shards[0]} (1/3) has ffffffffffff" in str(err.value)

    def test_different_splits_are_refused(self, whole: Path, shards: list[Path], tmp_path: Path) -> None:
        other = split_run(whole, tmp_path / "two", 2)
        with pytest.raises(ShardSetError, match="shards of different splits"):
            gather([shards[0], shards[1], other[1]], out_dir=tmp_path / "out")

    def test_record_in_the_wrong_shard_is_refused(self, shards: list[Path], tmp_path: Path) -> None:
        moved = (shards[1] / RUN_RECORDS_DIR / "part-00000.jsonl").read_text().splitlines()[0]
        with open(shards[0] / RUN_RECORDS_DIR / "part-00000.jsonl", "a") as f:
            f.write(moved + "\n")
        with pytest.raises(ShardSetError, match="does not belong to shard 1/3|also in"):
            gather(shards, out_dir=tmp_path / "out")

    def test_bad_record_names_file_line_and_field(self, shards: list[Path], tmp_path: Path) -> None:
        path = shards[0] / RUN_RECORDS_DIR / "part-00000.jsonl"
        lines = path.read_text().splitlines()
        rec = json.loads(lines[1])
        rec["empty_user_instruction_ja"] = "maybe"
        path.write_text("\n".join([lines[0], json.dumps(rec), *lines[2:]]) + "\n")
        with pytest.raises(InputRecordError, match=r"part-00000.jsonl: line 2: field `empty_user_instruction_ja`"):
            gather(shards, out_dir=tmp_path / "out")
        assert not (tmp_path / "out").exists()

    def test_bad_shard_value_in_shard_json(self, shards: list[Path], tmp_path: Path) -> None:
        info = json.loads((shards[0] / SHARD_FILE).read_text())
        (shards[0] / SHARD_FILE).write_text(json.dumps(dict(info, shard={"index": 4, "count": 3})))
        with pytest.raises(InputRecordError, match=r"shard.json: field `shard`: Value error, shard index 4"):
            gather(shards, out_dir=tmp_path / "out")

    def test_folder_that_is_not_a_shard(self, whole: Path, shards: list[Path], tmp_path: Path) -> None:
        with pytest.raises(ShardSetError, match=r"not a shard run folder \(no shard.json\)") as err:
            gather([*shards, whole], out_dir=tmp_path / "out")
        assert err.value.shards == [str(whole)]


class TestCli:
    def test_gather_command(self, shards: list[Path], tmp_path: Path) -> None:
        res = CliRunner().invoke(app, ["gather", *map(str, shards), "--out", str(tmp_path / "out")])
        assert res.exit_code == 0, res.output
        assert "records: 60" in res.output
        assert len(ids(tmp_path / "out")) == 60

    def test_gather_command_refusal_is_one_line(self, shards: list[Path], tmp_path: Path) -> None:
        import subprocess
        import sys

        res = subprocess.run(
            [sys.executable, "-m", "lmsynth", "gather", str(shards[0]), "--out", str(tmp_path / "out")],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 1
        assert res.stderr.splitlines()[0] == "Error: missing shard 2/3, 3/3 (got 1 of 3)"
