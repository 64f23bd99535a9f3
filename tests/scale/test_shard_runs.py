"""Sharded runs end to end on the real runner (fake backend): 1/3, 2/3, 3/3 + gather equals one run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmsynth.errors import ShardSetError
from lmsynth.pipeline.output.gather import gather
from lmsynth.pipeline.run import run_pipeline
from lmsynth.pipeline.shard import ShardSpec, read_shard_info, run_shard, shard_of
from lmsynth.pipeline.telemetry.report_files import read_report
from lmsynth.records import RUN_INFO_FILE, RUN_UNSAFE_DIR, iter_synth_records
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


N = 12


def prepared_with_cross_shard_duplicate(tmp_path: Path) -> Path:
    """12 instructions; one repeats c0's text but hashes to another shard than c0 (and c3 is empty)."""
    records = [make_record(i) for i in range(N)]
    j = next(i for i in range(1, N) if shard_of(f"c{i}", 3) != shard_of("c0", 3))
    records[j] = make_record(j, instruction="Question number 0?")
    records[3] = make_record(3, instruction="")
    unsafe = [make_record(90 + k, instruction=f"Flagged {k}") for k in range(4)]
    return write_prepared(tmp_path / "prep", records, unsafe)


@pytest.mark.timeout(600)
def test_three_shards_then_gather_equal_the_unsharded_run(tmp_path: Path) -> None:
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=4)
    prep = prepared_with_cross_shard_duplicate(tmp_path)
    whole = run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "whole", cache_dir=tmp_path / "cache-whole")
    shards = []
    for k in (1, 2, 3):
        d = tmp_path / f"shard-{k}"
        run_shard(pipe, input_dir=prep, out_dir=d, shard=ShardSpec(index=k, count=3), cache_dir=tmp_path / "cache")
        shards.append(d)
    # Each shard holds its slice only, and says which whole run it belongs to.
    sizes = [sum(1 for _ in iter_synth_records(d)) for d in shards]
    assert sum(sizes) == N and all(0 < s < N for s in sizes)
    assert {read_shard_info(d).fingerprint for d in shards} == {whole.fingerprint}

    res = gather(shards, out_dir=tmp_path / "gathered")
    assert res.order == "input" and res.records == N and res.unsafe == 4
    assert list(iter_synth_records(tmp_path / "gathered")) == list(iter_synth_records(tmp_path / "whole"))
    assert list(iter_synth_records(tmp_path / "gathered" / RUN_UNSAFE_DIR)) == list(
        iter_synth_records(tmp_path / "whole" / RUN_UNSAFE_DIR)
    )
    got = json.loads((tmp_path / "gathered" / RUN_INFO_FILE).read_text())
    want = json.loads((tmp_path / "whole" / RUN_INFO_FILE).read_text())
    # Same identity and counts; tokens differ only by the answers the cross-shard duplicate got in its shard.
    assert {k: v for k, v in got.items() if k != "tokens"} == {k: v for k, v in want.items() if k != "tokens"}
    assert got["tokens"]["translate"] == want["tokens"]["translate"]
    assert got["tokens"]["generate"]["requests"] > want["tokens"]["generate"]["requests"]
    # The gathered report sums the shards' reports.
    rep = read_report(tmp_path / "gathered")
    assert rep.runs == 3 and rep.instructions == N
    assert rep.step("translate").requests == sum(read_report(d).step("translate").requests for d in shards)

    # A missing or duplicated shard is refused with the shard named.
    with pytest.raises(ShardSetError, match="missing shard 2/3"):
        gather([shards[0], shards[2]], out_dir=tmp_path / "bad")
    copy = shutil.copytree(shards[0], tmp_path / "copy")
    with pytest.raises(ShardSetError, match="duplicated shard: 1/3"):
        gather([*shards, copy], out_dir=tmp_path / "bad")


@pytest.mark.timeout(300)
def test_report_token_totals_equal_the_sum_over_records(tmp_path: Path) -> None:
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=4)
    text = pipe.read_text().replace(", english: {n: 1}", "")  # JA responses only: every token is in a record
    pipe.write_text(text)
    prep = prepared_with_cross_shard_duplicate(tmp_path)
    run_shard(pipe, input_dir=prep, out_dir=tmp_path / "one", shard=ShardSpec(index=1, count=1))
    rep = read_report(tmp_path / "one")
    records = list(iter_synth_records(tmp_path / "one"))
    lengths = [a.response_token_length for r in records for a in r.synthesized_response_scoring_annotations]
    assert rep.step("generate").output_tokens == sum(lengths) > 0
    assert rep.step("generate").generations == len(lengths)
    info = json.loads((tmp_path / "one" / RUN_INFO_FILE).read_text())
    for stage, usage in info["tokens"].items():
        assert rep.step(stage).input_tokens == usage["prompt_tokens"]
        assert rep.step(stage).output_tokens == usage["completion_tokens"]
    assert rep.wall_time_s > 0 and rep.gpus == 0 and rep.gpu_hours == 0


SHARD_SCRIPT = """
import sys
from pathlib import Path
from lmsynth.pipeline.shard import ShardSpec, run_shard
if __name__ == "__main__":
    pipe, prep, out, cache, spec = sys.argv[1:]
    run_shard(pipe, input_dir=prep, out_dir=out, shard=ShardSpec.parse(spec), cache_dir=Path(cache))
"""


def start_shard(tmp_path: Path, pipe: Path, prep: Path, spec: str, log: str) -> subprocess.Popen:
    out = tmp_path / f"shard-{spec.replace('/', '-')}"
    return subprocess.Popen(
        [sys.executable, "-c", SHARD_SCRIPT, str(pipe), str(prep), str(out), str(tmp_path / "cache"), spec],
        stdout=(tmp_path / log).open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.timeout(600)
def test_killed_shard_resumes_alone(tmp_path: Path) -> None:
    # Only the run that is killed is paced (pacing is no part of a unit's identity).
    pipe, log = write_fake_pipeline(tmp_path, batch_size=2)
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(18)])
    assert start_shard(tmp_path, pipe, prep, "1/2", "s1.log").wait(timeout=240) == 0
    write_fake_pipeline(tmp_path, batch_size=2, sleep_s=0.3)
    proc = start_shard(tmp_path, pipe, prep, "2/2", "s2.log")
    gen_dir = tmp_path / "cache" / "generate"
    deadline = time.time() + 180
    before = len(list(gen_dir.rglob("*.json"))) if gen_dir.exists() else 0
    while time.time() < deadline and len(list(gen_dir.rglob("*.json"))) < before + 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shard2 = tmp_path / "shard-2-2"
    assert not (shard2 / RUN_INFO_FILE).exists()
    with pytest.raises(ShardSetError, match=f"unfinished shard run .*{shard2}"):
        gather([tmp_path / "shard-1-2", shard2], out_dir=tmp_path / "out")
    shard1_files = {p: p.read_bytes() for p in (tmp_path / "shard-1-2").rglob("*") if p.is_file()}
    calls_before = len(log.read_text().splitlines())
    write_fake_pipeline(tmp_path, batch_size=2)
    # Only the dead shard is run again; it reuses the units it finished and leaves shard 1 alone.
    assert start_shard(tmp_path, pipe, prep, "2/2", "s2-again.log").wait(timeout=240) == 0
    assert {p: p.read_bytes() for p in (tmp_path / "shard-1-2").rglob("*") if p.is_file()} == shard1_files
    rerun_prompts = len(log.read_text().splitlines()) - calls_before
    slice_rows = sum(1 for i in range(18) if shard_of(f"c{i}", 2) == 2)
    assert rerun_prompts < slice_rows * 5  # translate + 2 JA + EN + 2 judge per row, had it started over
    res = gather([tmp_path / "shard-1-2", shard2], out_dir=tmp_path / "out")
    assert [r.conversation_id for r in iter_synth_records(tmp_path / "out")] == [f"c{i}" for i in range(18)]
    assert res.records == 18


@pytest.mark.timeout(600)
def test_cli_run_shards_then_gather(tmp_path: Path) -> None:
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=4)
    prep = prepared_with_cross_shard_duplicate(tmp_path)
    env = {**os.environ, "LMSYNTH_CACHE": str(tmp_path / "cache")}
    lmsynth = [sys.executable, "-m", "lmsynth"]
    for spec in ("1/2", "2/2"):
        out = tmp_path / f"s{spec[0]}"
        res = subprocess.run(
            [*lmsynth, "run", str(pipe), "--input", str(prep), "--out", str(out), "--shard", spec],
            env=env,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert (out / "run_report.json").is_file() and read_shard_info(out).shard == ShardSpec.parse(spec)
    res = subprocess.run(
        [*lmsynth, "gather", str(tmp_path / "s2"), str(tmp_path / "s1"), "--out", str(tmp_path / "all")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "records: 12" in res.stdout and "order: input" in res.stdout
    assert len(list(iter_synth_records(tmp_path / "all"))) == N


def test_cli_bad_shard_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "lmsynth", "run", "x.yaml", "--input", "p", "--out", "o", "--shard", "4/3"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1
    assert res.stderr.splitlines()[0] == "Error: `--shard` '4/3': the shard index I must be between 1 and 3"
