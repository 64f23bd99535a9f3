"""The content-addressed stage cache: reuse, targeted regeneration, damaged units."""

from __future__ import annotations

from pathlib import Path

from lmsynth.pipeline.cache import StageCache
from lmsynth.pipeline.config import PipelineConfig, stage_fingerprint
from lmsynth.pipeline.stages.registry import run_unit
from lmsynth.pipeline.stages.translate import TranslateConfig
from tests.pipeline.factories import fake, make_row


def units(rows, size):
    return [rows[k : k + size] for k in range(0, len(rows), size)]


def translate_all(rows, cache, model, config=None):
    config = config or TranslateConfig(model="m")
    done = [run_unit("translate", u, model=model, config=config, cache=cache) for u in units(rows, 2)]
    return [o for unit in done for o in unit.outputs]


def test_rerun_reuses_every_unit(tmp_path: Path) -> None:
    cache = StageCache(tmp_path, stage="translate", fingerprint="fp")
    rows = [make_row(i) for i in range(6)]
    model = fake("訳")
    first = translate_all(rows, cache, model)
    assert model.calls == 6 and len(cache.units()) == 3
    again = translate_all(rows, cache, model)
    assert model.calls == 6 and again == first


def test_changing_one_row_regenerates_only_its_unit(tmp_path: Path) -> None:
    cache = StageCache(tmp_path, stage="translate", fingerprint="fp")
    rows = [make_row(i) for i in range(6)]
    translate_all(rows, cache, fake("訳"))
    rows[3] = make_row(3, instruction="A changed question")
    model = fake("新しい訳")
    out = translate_all(rows, cache, model)
    assert model.calls == 2  # the unit holding rows 2 and 3, nothing else
    assert [o.count("新しい訳") for o in out] == [0, 0, 1, 1, 0, 0]
    assert len(cache.units()) == 4


def test_changing_a_prompt_regenerates_everything(tmp_path: Path) -> None:
    base = {"name": "t", "models": {"m": {"backend": "fake"}}, "generate": {"model": "m"}}
    prompt = tmp_path / "p.txt"
    prompt.write_text("Translate: {{ instruction }}")
    cfg_a = PipelineConfig.model_validate({**base, "translate": {"model": "m", "prompt": str(prompt)}})
    fp_a = stage_fingerprint(cfg_a, "translate")
    rows = [make_row(i) for i in range(4)]
    translate_all(rows, StageCache(tmp_path, stage="translate", fingerprint=fp_a), fake("訳"), cfg_a.translate)
    prompt.write_text("Translate into polite Japanese: {{ instruction }}")
    fp_b = stage_fingerprint(cfg_a, "translate")
    assert fp_b != fp_a
    model = fake("訳")
    translate_all(rows, StageCache(tmp_path, stage="translate", fingerprint=fp_b), model, cfg_a.translate)
    assert model.calls == 4
    assert len(list((tmp_path / "translate").iterdir())) == 2


def test_damaged_unit_is_recomputed(tmp_path: Path) -> None:
    cache = StageCache(tmp_path, stage="translate", fingerprint="fp")
    rows = [make_row(i) for i in range(2)]
    translate_all(rows, cache, fake("訳"))
    cache.units()[0].write_text('{"stage": "translate", "outp')
    model = fake("訳")
    translate_all(rows, cache, model)
    assert model.calls == 2


def test_unit_files_are_written_atomically(tmp_path: Path) -> None:
    cache = StageCache(tmp_path, stage="translate", fingerprint="fp")
    translate_all([make_row(0)], cache, fake("訳"))
    names = [p.name for p in (tmp_path / "translate" / "fp").iterdir()]
    assert len(names) == 1 and not names[0].startswith(".")
