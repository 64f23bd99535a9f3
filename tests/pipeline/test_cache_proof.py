"""Cache units prove themselves: a damaged, edited, misplaced or old-format unit is dropped and recomputed.

Each case damages a unit of its own in a finished run's cache, and one rerun of `lmsynth run` (its own
process, scripted models) follows: it exits 0, makes each damaged unit again as the first run made it,
releases values that agree with the judgement text, and counts each unit in `run_report.json`
(`units_invalid`). The stage cache alone is checked against more kinds of damage below.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lmsynth.pipeline.cache import CachedUnit, StageCache, unit_checksum
from lmsynth.pipeline.stages.registry import run_unit
from lmsynth.pipeline.stages.translate import TranslateConfig
from lmsynth.pipeline.telemetry.report_files import read_report
from lmsynth.records import iter_synth_records
from tests.pipeline.factories import fake, make_record, make_row, run_cli, write_fake_pipeline, write_prepared
from tests.pipeline.test_cache import translate_all, units


def unit_files(cache: Path, stage: str) -> list[Path]:
    return sorted((cache / stage).rglob("*.json"))


def resealed(path: Path, edit: Callable[[dict], None]) -> None:
    """Edit a unit's fields and give it a correct checksum again (a well-formed unit with a bad payload)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    data.pop("checksum")
    data["checksum"] = unit_checksum(CachedUnit.model_construct(**data, checksum=""))
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def flip_score(path: Path) -> None:
    data = path.read_bytes()
    assert b"[7.0" in data
    path.write_bytes(data.replace(b"[7.0", b"[6.0", 1))


def bad_utf8(path: Path) -> None:
    data = path.read_bytes()
    cut = next(i for i, b in enumerate(data) if b >= 0x80) + 1  # inside the first multi-byte character
    path.write_bytes(data[:cut] + b"\xff" + data[cut + 1 :])


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def extra_key(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "note": "hand-edited"}, ensure_ascii=False), encoding="utf-8")


def extra_output_key(path: Path) -> None:
    def edit(data: dict) -> None:
        out = json.loads(data["outputs"][0])
        data["outputs"][0] = json.dumps({**out, "bonus": 1})

    resealed(path, edit)


def other_key(path: Path) -> None:
    """The unit of other rows copied under this unit's key (the stage's last unit, which no case damages)."""
    other = unit_files(path.parents[1].parent, path.parent.parent.name)[-1]
    assert other != path
    shutil.copyfile(other, path)


def old_format(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["checksum"], data["format"]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def malformed_generate(path: Path) -> None:
    resealed(path, lambda data: data["outputs"].__setitem__(0, '{"responses_ja": 5}'))


CASES = {
    "judge-bit-flip": ("judge", flip_score),
    "judge-invalid-utf8": ("judge", bad_utf8),
    "judge-truncated": ("judge", truncate),
    "judge-extra-key": ("judge", extra_key),
    "judge-extra-output-key": ("judge", extra_output_key),
    "judge-other-key": ("judge", other_key),
    "judge-old-format": ("judge", old_format),
    "generate-malformed": ("generate", malformed_generate),
    "translate-bit-flip": ("translate", lambda p: p.write_bytes(p.read_bytes().replace("訳".encode(), b"X", 1))),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, list, int]:
    """One finished run, one row per unit: its pipeline, prepared folder, cache, records and model calls."""
    root = tmp_path_factory.mktemp("finished")
    pipe, log = write_fake_pipeline(root, batch_size=1)
    prep = write_prepared(root / "prep", [make_record(i) for i in range(8)])
    cache = root / "cache"
    proc = run_cli(pipe, prep, root / "out", cache, root / "run.log")
    assert proc.wait(timeout=240) == 0, (root / "run.log").read_text()[-3000:]
    assert read_report(root / "out").units_invalid == 0
    return pipe, prep, cache, list(iter_synth_records(root / "out")), len(log.read_text().splitlines())


@pytest.mark.timeout(300)
def test_invalid_units_are_recomputed_and_counted(finished, tmp_path: Path) -> None:
    """Every case at once, each on a unit of its own: one rerun makes each of them again, and only them."""
    pipe, prep, base_cache, records, full_calls = finished
    cache = tmp_path / "cache"
    shutil.copytree(base_cache, cache)
    damaged: dict[str, Path] = {}
    for case, (stage, damage) in CASES.items():
        damaged[case] = unit_files(cache, stage)[sum(CASES[c][0] == stage for c in damaged)]
        damage(damaged[case])
    log = tmp_path / "calls.jsonl"
    pipe_copy = tmp_path / "fake.yaml"
    pipe_copy.write_text(pipe.read_text().replace(str(pipe.parent / "calls.jsonl"), str(log)))
    rerun = run_cli(pipe_copy, prep, tmp_path / "out", cache, tmp_path / "rerun.log")
    assert rerun.wait(timeout=240) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    for case, path in damaged.items():  # made again, as the first run made it
        original = base_cache / path.relative_to(cache)
        assert CachedUnit.model_validate_json(path.read_text(encoding="utf-8")) == CachedUnit.model_validate_json(
            original.read_text(encoding="utf-8")
        ), case
    called = log.read_text().splitlines() if log.exists() else []
    assert 0 < len(called) < full_calls, called  # the damaged units' rows only
    again = list(iter_synth_records(tmp_path / "out"))
    assert again == records
    for record in again:  # what the judge wrote, released
        for note in record.synthesized_response_scoring_annotations:
            assert note.judgement.endswith("Rating: [[7]]") and note.preference_score == 7.0
    report = read_report(tmp_path / "out")
    assert report.units_invalid == len(CASES)
    for stage in {stage for stage, _ in CASES.values()}:
        assert report.step(stage).units_invalid == sum(s == stage for s, _ in CASES.values()), stage


UNIT_DAMAGE = {
    "bit-flip": lambda p: p.write_bytes(p.read_bytes().replace("訳".encode(), b"X", 1)),
    "invalid-utf8": bad_utf8,
    "truncated": truncate,
    "empty": lambda p: p.write_bytes(b""),
    "extra-key": extra_key,
    "extra-output-key": extra_output_key,
    "other-key": other_key,
    "old-format": old_format,
    "resealed-wrong-output": lambda p: resealed(p, lambda d: d["outputs"].__setitem__(0, '{"translated": true}')),
    "resealed-wrong-stage": lambda p: resealed(p, lambda d: d.__setitem__("stage", "judge")),
    "resealed-missing-row": lambda p: resealed(p, lambda d: d["outputs"].pop()),
    "not-an-object": lambda p: p.write_text("[]"),
    "a-folder": lambda p: (p.unlink(), p.mkdir(), (p / "x").write_text("{}")),
    "a-symlink-loop": lambda p: (p.unlink(), p.symlink_to(p.name)),
    "a-dangling-link": lambda p: (p.unlink(), p.symlink_to("gone.json")),
    "a-pipe": lambda p: (p.unlink(), os.mkfifo(p)),
}


@pytest.mark.parametrize("case", list(UNIT_DAMAGE))
def test_stage_cache_never_serves_an_invalid_unit(case: str, tmp_path: Path) -> None:
    """At the cache's own level: `read` reports the unit invalid, `run_unit` recomputes it and says so."""
    cache = StageCache(tmp_path, stage="translate", fingerprint="fp")
    rows = [make_row(i) for i in range(4)]
    first = translate_all(rows, cache, fake("訳"))
    target = cache.units()[0]
    UNIT_DAMAGE[case](target)
    key = target.stem
    assert cache.read(key, n_rows=2) == (None, True)
    model = fake("訳")
    done = [
        run_unit("translate", u, model=model, config=TranslateConfig(model="m"), cache=cache) for u in units(rows, 2)
    ]
    assert [o for unit in done for o in unit.outputs] == first
    assert model.calls == 2
    assert sum(u.invalid for u in done) == 1 and sum(not u.cached for u in done) == 1
    assert cache.read(key, n_rows=2).outputs is not None


def test_units_invalid_add_up_over_gathered_shards_and_old_reports_read_as_zero() -> None:
    from lmsynth.pipeline.telemetry.report import RunReport, StepReport
    from lmsynth.pipeline.telemetry.report_files import merge_reports

    a = RunReport(instructions=2, wall_time_s=1, units_invalid=2, steps=[StepReport(step="judge", units_invalid=2)])
    b = RunReport(instructions=3, wall_time_s=1, units_invalid=1, steps=[StepReport(step="judge", units_invalid=1)])
    merged = merge_reports([a, b])
    assert merged.units_invalid == 3 and merged.step("judge").units_invalid == 3
    old = RunReport.model_validate_json('{"instructions": 1, "wall_time_s": 1.0, "steps": [{"step": "judge"}]}')
    assert old.units_invalid == 0 and old.step("judge").units_invalid == 0
