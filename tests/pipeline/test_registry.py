"""The stage registry: the one list that config validation, the runner, the steps and telemetry read."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.pipeline.config import PipelineConfig, load_pipeline_config
from lmsynth.pipeline.pipeline_row import STAGE_OUTPUTS
from lmsynth.pipeline.stages.registry import LLM_STAGES, STAGE, STAGES
from lmsynth.records import RunCounts


def test_every_stage_once_in_row_order() -> None:
    assert [s.name for s in STAGES] == list(STAGE_OUTPUTS) == list(STAGE)
    assert LLM_STAGES == ["translate", "generate", "judge", "second_turn"]


def test_config_blocks_are_the_registry_models() -> None:
    config = load_pipeline_config(constants.PIPELINES_DIR / "v0.3-gemma2.yaml")
    for stage in STAGES:
        if stage.config is None:
            assert stage.name not in PipelineConfig.model_fields
        else:
            block = getattr(config, stage.name)
            assert stage.parse_config(block.model_dump_json()) == block
    for stage in STAGES:
        assert stage.needs is None or stage.needs in STAGE
        assert set(stage.generation_counts) <= set(RunCounts.model_fields)
        assert stage.legacy_failures is None or stage.legacy_failures in RunCounts.model_fields


def test_model_stages_have_a_cache_view_and_the_others_none() -> None:
    for stage in STAGES:
        assert (stage.view is not None) == stage.calls_model


@pytest.mark.parametrize(
    ("name", "stages"),
    [
        ("demo", ["translate", "flags", "generate", "judge", "select"]),
        ("v0.3-gemma2", ["translate", "flags", "generate", "judge", "select", "second_turn"]),
    ],
)
def test_pipeline_stages_follow_the_registry(name: str, stages: list[str]) -> None:
    config = load_pipeline_config(constants.PIPELINES_DIR / f"{name}.yaml")
    assert config.stages() == stages
    assert config.model_stages() == [s for s in stages if s in LLM_STAGES]
    unjudged = config.model_copy(update={"judge": None, "second_turn": None})
    assert unjudged.stages() == ["translate", "flags", "generate"]  # select and second_turn need a judge


def test_each_stage_has_its_step(tmp_path: Path) -> None:
    from lmsynth.pipeline.executor.steps import StepContext, stage_step
    from lmsynth.pipeline.plan import resolve

    config = load_pipeline_config(constants.PIPELINES_DIR / "demo.yaml")
    plan = resolve(config, cache_root=tmp_path)
    context = StepContext(plan=plan, events_dir=None, seen_path=None, scratch_dir=None)
    from distilabel.pipeline import Pipeline

    with Pipeline(name="registry-test", cache_dir=str(tmp_path / "work")):
        steps = {s: stage_step(plan.stage(s), context) for s in config.stages()}
    assert {s: type(step).__name__ for s, step in steps.items()} == {s: STAGE[s].step for s in config.stages()}
    assert steps["generate"].stage == "generate" and steps["flags"].seen_path is None
