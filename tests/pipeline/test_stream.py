"""Streaming runs and running safely beside other runs: windows, leftovers, locks, cache statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmsynth.errors import PipelineError
from lmsynth.outdir import MARKER_FILE
from lmsynth.pipeline.run import run_pipeline
from lmsynth.pipeline.workdir import WORK_DIR, clean_stale_work_dirs, run_work_dir, unit_lock
from lmsynth.records import PREPARED_MARKER, RunInfo, iter_synth_records
from tests.pipeline.factories import make_record, run_cli, write_fake_pipeline, write_prepared


def prepared_with_late_duplicate(tmp_path: Path, n: int = 12) -> Path:
    records = [make_record(i) for i in range(n)]
    records[n - 1] = make_record(n - 1, instruction="Question number 0?")  # translates like c0, windows later
    return write_prepared(tmp_path / "prep", records, [make_record(90, instruction="Something flagged")])


def calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.timeout(300)
def test_windows_give_the_records_of_one_window(tmp_path: Path) -> None:
    prep = prepared_with_late_duplicate(tmp_path)
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2, window=4)
    streamed = run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "streamed", cache_dir=tmp_path / "c1")
    (tmp_path / "w").mkdir()
    whole_pipe, _ = write_fake_pipeline(tmp_path / "w", batch_size=2, window=1000)
    whole = run_pipeline(whole_pipe, input_dir=prep, out_dir=tmp_path / "whole", cache_dir=tmp_path / "c2")
    records = list(iter_synth_records(tmp_path / "streamed"))
    assert records == list(iter_synth_records(tmp_path / "whole"))
    assert [r.conversation_id for r in records] == [f"c{i}" for i in range(12)]
    # The duplicate sits three windows after its original: the flags stage still sees it.
    assert records[-1].duplicate_user_instruction_ja == "c0" and records[-1].synthesized_assistant_responses == []
    assert [r.conversation_id for r in iter_synth_records(tmp_path / "streamed" / "unsafe")] == ["c90"]
    assert streamed.info.counts == whole.info.counts and streamed.info.tokens == whole.info.tokens
    assert streamed.fingerprint == whole.fingerprint
    info = RunInfo.model_validate_json((tmp_path / "streamed" / "run.json").read_text())
    assert info.counts.duplicate == 1


@pytest.mark.timeout(300)
def test_records_are_split_into_part_files_across_windows(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(10)])
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2, window=4)
    pipe.write_text(pipe.read_text() + "shard_records: 3\n")
    run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    parts = sorted(p.name for p in (tmp_path / "out" / "records").iterdir())
    assert parts == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl", "part-00003.jsonl"]
    assert [r.conversation_id for r in iter_synth_records(tmp_path / "out")] == [f"c{i}" for i in range(10)]


def test_unfinished_prepared_folder_is_refused(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(2)])
    (prep / PREPARED_MARKER).unlink()
    pipe, log = write_fake_pipeline(tmp_path)
    with pytest.raises(PipelineError, match=r"prep: unfinished prepared folder .*_COMPLETE.*`lmsynth prepare`"):
        run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists() and calls(log) == 0


def test_unfinished_prepared_folder_cli_error_is_one_line(tmp_path: Path) -> None:
    prep = write_prepared(tmp_path / "prep", [make_record(0)])
    (prep / PREPARED_MARKER).unlink()
    pipe, _ = write_fake_pipeline(tmp_path)
    env = {**os.environ, "LMSYNTH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(tmp_path / "o")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == (
        f"Error: {prep}: unfinished prepared folder (no _COMPLETE marker); run `lmsynth prepare` again"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(300)
def test_leftovers_of_killed_runs_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(4)])
    pipe, _ = write_fake_pipeline(tmp_path)
    out, cache = tmp_path / "out", tmp_path / "cache"
    # What a run killed while writing leaves: temporary and replaced folders and files in the run folder,
    # an unlocked work folder, and a unit lock nobody holds.
    for name in (".records.abc123.tmp", ".unsafe.def456.tmp", ".records.old"):
        (out / name).mkdir(parents=True)
        (out / name / "part-00000.jsonl").write_text("{}\n")
    (out / ".run.json.x1.tmp").write_text("{")
    stale = cache / WORK_DIR / "4242-dead"
    (stale / "distilabel").mkdir(parents=True)
    (stale / ".lock").write_text("")
    result = run_pipeline(pipe, input_dir=prep, out_dir=out, cache_dir=cache)
    left = sorted(p.name for p in out.iterdir())
    assert left == [MARKER_FILE, "records", "run.json", "run_report.json", "unsafe"]
    assert not stale.exists() and list((cache / WORK_DIR).iterdir()) == []
    assert not list(cache.rglob("*.lock")) and not list(cache.rglob("*.tmp"))
    assert not (tmp_path / "hf-cache").exists()  # distilabel's output is not copied into the datasets cache
    assert result.records == 4


def test_live_work_folders_are_kept(tmp_path: Path) -> None:
    with run_work_dir(tmp_path) as mine:
        assert clean_stale_work_dirs(tmp_path / WORK_DIR) == []
        assert mine.is_dir()
    assert not mine.exists()


def test_unit_lock_removes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "u.lock"
    with unit_lock(path):
        assert path.exists()
    assert not path.exists()


@pytest.mark.timeout(300)
def test_units_reused_counts_only_this_runs_units(tmp_path: Path) -> None:
    pipe, _ = write_fake_pipeline(tmp_path)
    cache = tmp_path / "cache"
    a = write_prepared(tmp_path / "a", [make_record(i) for i in range(4)])
    b = write_prepared(tmp_path / "b", [make_record(i) for i in range(10, 14)])
    first = run_pipeline(pipe, input_dir=a, out_dir=tmp_path / "out-a", cache_dir=cache)
    other = run_pipeline(pipe, input_dir=b, out_dir=tmp_path / "out-b", cache_dir=cache)
    # The cache holds a's units too, but b used none of them.
    assert first.units_generated == {"translate": 2, "generate": 2, "judge": 2}
    assert other.units_reused == {"translate": 0, "generate": 0, "judge": 0}
    assert other.units_generated == {"translate": 2, "generate": 2, "judge": 2}
    again = run_pipeline(pipe, input_dir=b, out_dir=tmp_path / "out-b", cache_dir=cache)
    assert again.units_reused == {"translate": 2, "generate": 2, "judge": 2}
    assert again.units_generated == {"translate": 0, "generate": 0, "judge": 0}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("same_out", [True, False], ids=["same-out", "different-out"])
def test_two_runs_at_once_both_succeed_and_share_the_work(tmp_path: Path, same_out: bool) -> None:
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(8)])
    pipe, log = write_fake_pipeline(tmp_path, batch_size=2, sleep_s=0.05)
    cache = tmp_path / "cache"
    outs = [tmp_path / "out", tmp_path / ("out" if same_out else "out2")]
    procs = [run_cli(pipe, prep, out, cache, tmp_path / f"run{k}.log") for k, out in enumerate(outs)]
    for k, proc in enumerate(procs):
        assert proc.wait(timeout=500) == 0, (tmp_path / f"run{k}.log").read_text()[-3000:]
    ids = [f"c{i}" for i in range(8)]
    for out in outs:
        assert [r.conversation_id for r in iter_synth_records(out)] == ids
    # Every prompt was sent once: one run computed each unit, the other waited and reused it.
    prompts = [json.loads(line)["prompt"] for line in log.read_text().splitlines()]
    assert len(prompts) == 8 + 8 + 8 * 2 + 8  # translate + generate JA + judge (n=2) + generate EN
    assert not list(cache.rglob("*.lock")) and list((cache / WORK_DIR).iterdir()) == []
