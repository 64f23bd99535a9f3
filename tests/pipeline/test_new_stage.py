"""A stage added as one module plus one registry entry (`tests/pipeline/example_stage.py`) runs end to end."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmsynth.pipeline.config import load_pipeline_config
from lmsynth.pipeline.run import run_pipeline
from lmsynth.pipeline.stages import registry as stages
from lmsynth.records import read_run_info
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


@pytest.fixture
def topic_stage() -> Iterator[None]:
    """Registered for the test only: the registry is put back after it."""
    sys.modules.pop("tests.pipeline.example_stage", None)
    importlib.import_module("tests.pipeline.example_stage")
    try:
        yield
    finally:
        stages.unregister("topic")
        sys.modules.pop("tests.pipeline.example_stage", None)


@pytest.mark.timeout(300)
def test_a_registered_stage_runs_caches_and_is_accounted(tmp_path: Path, topic_stage: None) -> None:
    pipe, log = write_fake_pipeline(tmp_path)
    pipe.write_text(pipe.read_text() + "topic: {model: t}\n")
    config = load_pipeline_config(pipe)
    assert config.stages()[-1] == "topic" and config.model_stages()[-1] == "topic"
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(4)])

    first = run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    info = read_run_info(tmp_path / "out")
    assert info.models["topic"].model == config.model_for("topic").model
    assert info.tokens["topic"].requests == 4 and "topic" in info.stage_fingerprints
    assert first.units_generated["topic"] == 2  # batch_size 2: two cache units
    topics = [json.loads(line)["prompt"] for line in log.read_text().splitlines() if "One word" in line]
    assert len(topics) == 4
    assert any((tmp_path / "cache" / "topic").rglob("*.json"))

    again = run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert again.units_reused["topic"] == 2 and again.units_generated["topic"] == 0


def test_without_its_block_the_stage_does_not_run(tmp_path: Path, topic_stage: None) -> None:
    pipe, _ = write_fake_pipeline(tmp_path)
    assert "topic" not in load_pipeline_config(pipe).stages()


def test_its_block_is_refused_when_the_stage_is_not_registered(tmp_path: Path) -> None:
    from lmsynth.errors import ConfigError

    pipe, _ = write_fake_pipeline(tmp_path)
    pipe.write_text(pipe.read_text() + "topic: {model: t}\n")
    with pytest.raises(ConfigError, match="topic"):
        load_pipeline_config(pipe)
