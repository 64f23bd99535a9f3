"""`kill -9` of a whole `lmsynth run` at each point that matters, then the same command again.

After each kill the rerun must finish with the same records and leave nothing of the killed run behind:
no temporary folders in the run folder, no work folders or locks in the cache. It resumes: the units the
killed run finished are reused as they are, not computed again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lmsynth.outdir import MARKER_FILE
from lmsynth.pipeline.workdir import WORK_DIR
from lmsynth.records import iter_synth_records
from tests.pipeline.factories import make_record, run_cli, write_fake_pipeline, write_prepared


N = 12
STAGES = ("translate", "generate", "judge")


def _units(stage: str) -> Callable[[Path, Path], bool]:
    return lambda out, cache: any((cache / stage).rglob("*.json")) if (cache / stage).is_dir() else False


def _writing(out: Path, cache: Path) -> bool:
    # A later window is running while the first one's records already sit in the run folder's temp folder.
    return any(p.stat().st_size > 0 for p in out.glob(".records.*.tmp/part-*.jsonl"))


KILL_POINTS: dict[str, Callable[[Path, Path], bool]] = {
    **{stage: _units(stage) for stage in STAGES},
    "writing": _writing,
}


def leftovers(root: Path, out: Path, cache: Path) -> list[str]:
    """What a run leaves besides its finished folder and cache units."""
    found = [p for p in out.iterdir() if p.name.startswith(".") and p.name != MARKER_FILE] if out.is_dir() else []
    found += list((cache / WORK_DIR).iterdir()) if (cache / WORK_DIR).is_dir() else []
    found += list(root.rglob("*.lock")) + list(root.rglob("*.tmp"))
    return sorted({str(p.relative_to(root)) for p in found})


@pytest.mark.timeout(600)
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_then_rerun_leaves_nothing_behind(tmp_path: Path, point: str) -> None:
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(N)], [make_record(90)])
    pipe, _ = write_fake_pipeline(tmp_path, batch_size=2, sleep_s=0.1, window=4)
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = run_cli(pipe, prep, out, cache, tmp_path / "killed.log")
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not KILL_POINTS[point](out, cache):
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the kill point `{point}`"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    print(f"\nkill -9 during {point}: left {leftovers(tmp_path, out, cache)}")
    done = {p: p.read_bytes() for p in cache.rglob("*.json") if p.parent.parent.name in STAGES}
    assert done, f"no unit finished before the kill point `{point}`"
    write_fake_pipeline(tmp_path, batch_size=2, window=4)  # unpaced: pacing is no part of a unit's identity
    rerun = run_cli(pipe, prep, out, cache, tmp_path / "rerun.log")
    assert rerun.wait(timeout=400) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert {p: p.read_bytes() for p in done} == done
    assert f"units_reused: {len(done)}\n" in (tmp_path / "rerun.log").read_text()
    assert [r.conversation_id for r in iter_synth_records(out)] == [f"c{i}" for i in range(N)]
    assert [r.conversation_id for r in iter_synth_records(out / "unsafe")] == ["c90"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "records", "run.json", "run_report.json", "unsafe"]
    assert leftovers(tmp_path, out, cache) == []
