"""Pipeline YAML validation: the shipped pipelines load, bad ones name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.errors import ConfigError
from lmsynth.pipeline.config import load_pipeline_config


@pytest.mark.parametrize("name", ["demo", "v0.1-llama31", "v0.3-gemma2", "v0.5-gemma3"])
def test_shipped_pipelines_load(name: str) -> None:
    cfg = load_pipeline_config(constants.PIPELINES_DIR / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.generate.repetition_threshold == 2000
    assert cfg.judge is not None and cfg.judge.sampling.temperature == 0


def test_spec_settings_of_release_pipelines() -> None:
    v01 = load_pipeline_config(constants.PIPELINES_DIR / "v0.1-llama31.yaml")
    v03 = load_pipeline_config(constants.PIPELINES_DIR / "v0.3-gemma2.yaml")
    v05 = load_pipeline_config(constants.PIPELINES_DIR / "v0.5-gemma3.yaml")
    assert (v01.generate.sampling.n, v03.generate.sampling.n, v05.generate.sampling.n) == (6, 6, 10)
    assert v01.generate.english and v03.generate.english and v05.generate.english is None
    assert v03.second_turn is not None and v01.second_turn is None
    for cfg in (v01, v03, v05):
        s = cfg.generate.sampling
        assert (s.temperature, s.top_p, s.max_tokens) == (0.6, 1.0, 4096)
    assert "405B" in v01.model_for("generate").model and "70B" in v01.model_for("judge").model


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


BASE = "name: t\nmodels: {m: {backend: fake}}\ntranslate: {model: m}\ngenerate: {model: m}\n"


def test_unknown_model_reference_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"generate\.model.*unknown model `nope`"):
        load_pipeline_config(write(tmp_path, BASE.replace("generate: {model: m}", "generate: {model: nope}")))


def test_bad_sampling_value_names_the_key_path(tmp_path: Path) -> None:
    text = BASE.replace("generate: {model: m}", "generate: {model: m, sampling: {temperature: 9}}")
    with pytest.raises(ConfigError) as e:
        load_pipeline_config(write(tmp_path, text))
    assert e.value.key == "generate.sampling.temperature"


def test_unknown_judge_mode_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_pipeline_config(write(tmp_path, BASE + "judge: {mode: pairwise, model: m}\n"))
    assert e.value.key == "judge"


def test_missing_prompt_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prompt file not found") as e:
        load_pipeline_config(
            write(tmp_path, BASE.replace("translate: {model: m}", "translate: {model: m, prompt: x.txt}"))
        )
    assert e.value.key == "translate.prompt"


def test_relative_prompt_resolves_next_to_yaml(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("Translate: {{ instruction }}")
    cfg = load_pipeline_config(
        write(tmp_path, BASE.replace("translate: {model: m}", "translate: {model: m, prompt: mine.txt}"))
    )
    assert cfg.translate.prompt == tmp_path / "mine.txt"


def test_second_turn_needs_a_judge(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="second_turn"):
        load_pipeline_config(write(tmp_path, BASE + "second_turn: {model: m}\n"))
