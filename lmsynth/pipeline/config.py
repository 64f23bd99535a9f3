"""The pipeline YAML (`pipelines/*.yaml`): models by name, then one block per stage.

A config loads, validates and fingerprints without importing distilabel or vLLM. Stage blocks name a model
from `models`, so a generator and a judge can share one engine definition (or not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from lmsynth.config import StrictModel, load_yaml
from lmsynth.demo_model import registry_revision
from lmsynth.fingerprint import EXCLUDED_FIELDS, fingerprint
from lmsynth.llm import ModelConfig
from lmsynth.pipeline.stages.generate import GenerateConfig
from lmsynth.pipeline.stages.judge import JudgeConfig
from lmsynth.pipeline.stages.prompts import read_prompt
from lmsynth.pipeline.stages.registry import LLM_STAGES, STAGE, STAGES, parse_block
from lmsynth.pipeline.stages.second_turn import SecondTurnConfig
from lmsynth.pipeline.stages.select import SelectConfig
from lmsynth.pipeline.stages.translate import TranslateConfig


class PipelineConfig(StrictModel):
    """One pipeline definition."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="Recorded in run.json.")
    description: str = ""
    limit: int | None = Field(None, ge=1, description="Use only the first N instructions (and N unsafe ones).")
    batch_size: int = Field(
        128, ge=1, le=100_000, description="Rows per distilabel batch and per cache unit (≥ max_num_seqs / n)."
    )
    # Each window ends with the engines idle while one distilabel pipeline stops and the next starts; 4096
    # rows halve that cost against 2048 for about 300 MiB more at v0.5's shape (docs/pipelines-and-stages.md).
    window: int = Field(
        4096,
        ge=1,
        description="Rows the run holds at once: each window runs through every stage, then its records are written.",
    )
    shard_records: int = Field(10_000, ge=1, description="SynthRecords per output shard file.")
    models: dict[str, ModelConfig] = Field(min_length=1)
    translate: TranslateConfig
    generate: GenerateConfig
    judge: JudgeConfig | None = None
    select: SelectConfig = SelectConfig()
    second_turn: SecondTurnConfig | None = None
    extra_stages: dict[str, Any] = Field(
        default_factory=dict, description="Blocks of stages registered beyond the built-in ones, by stage name."
    )

    @model_validator(mode="before")
    @classmethod
    def _registered_blocks(cls, data: Any) -> Any:
        """A registered stage's block is a top-level key named after it, as the built-in stages' are."""
        if isinstance(data, dict):
            extra = {k: v for k, v in data.items() if k in STAGE and k not in cls.model_fields}
            if extra:
                data = {k: v for k, v in data.items() if k not in extra}
                data["extra_stages"] = {**data.get("extra_stages", {}), **extra}
        return data

    @field_validator("extra_stages")
    @classmethod
    def _parse_registered_blocks(cls, blocks: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in blocks if k not in STAGE or k in cls.model_fields]
        if unknown:
            raise ValueError(f"`{unknown[0]}`: no such registered stage")
        return {k: parse_block(k, v) for k, v in blocks.items()}

    @model_validator(mode="after")
    def _models_exist(self) -> PipelineConfig:
        for stage in LLM_STAGES:
            block = self.block(stage)
            if block is not None and block.model not in self.models:
                known = ", ".join(sorted(self.models))
                raise ValueError(f"`{stage}.model`: unknown model `{block.model}` (known: {known})")
        if self.second_turn is not None and self.judge is None:
            raise ValueError("`second_turn` needs a `judge` block: it builds on the best-scoring response")
        return self

    def stages(self) -> list[str]:
        """The stages this pipeline runs, in order: those with a block (or none to have) whose `needs` run.

        `select` ranks judge scores, so it runs only with a judge.
        """
        names: list[str] = []
        for stage in STAGES:
            present = stage.config is None or self.block(stage.name) is not None
            if present and (stage.needs is None or stage.needs in names):
                names.append(stage.name)
        return names

    def model_stages(self) -> list[str]:
        """The stages of `stages()` that call a model, in order."""
        return [s for s in self.stages() if STAGE[s].calls_model]

    def block(self, stage: str) -> Any:
        """The YAML block of `stage` (None when the pipeline has none)."""
        if stage in type(self).model_fields:
            return getattr(self, stage)
        return self.extra_stages.get(stage)

    def model_for(self, stage: str) -> Any:
        """The model config a stage uses."""
        return self.models[self.block(stage).model]


def load_pipeline_config(path: Path | str) -> PipelineConfig:
    """Read and validate a pipeline YAML; prompt paths resolve relative to it.

    Raises:
        ConfigError: names the file and the key of the first problem.
    """
    return load_yaml(path, PipelineConfig)


def model_revision(model: Any) -> str | None:
    """The revision recorded for a model: the configured one, else the registry's."""
    return model.revision or registry_revision(model.model)


def stage_fingerprint(config: PipelineConfig, stage: str) -> str:
    """The cache folder fingerprint of one stage: its block (prompts by text), its model and revision."""
    block = config.block(stage)
    extra: dict[str, Any] = {"stage": stage}
    if stage in LLM_STAGES:
        model = config.model_for(stage)
        extra["model"] = _identity(model)
        extra["revision"] = model_revision(model)
    return fingerprint(_identity(block), input_digest=None, extra=extra)


def run_fingerprint(
    config: PipelineConfig, *, input_digest: str, stage_fingerprints: dict[str, str] | None = None
) -> str:
    """The whole run: every stage's identity (`stage_fingerprints` when already computed) plus the input rows."""
    stage_fps = stage_fingerprints or {s: stage_fingerprint(config, s) for s in config.stages()}
    return fingerprint(stage_fps, input_digest=input_digest, extra={})


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _identity(obj: Any) -> Any:
    """JSON identity of a config with every prompt file replaced by its text (paths differ across machines)."""
    if isinstance(obj, BaseModel):
        return {k: _identity(getattr(obj, k)) for k in type(obj).model_fields if k not in EXCLUDED_FIELDS}
    if isinstance(obj, Path):
        return {"prompt_text": read_prompt(obj)}
    if isinstance(obj, dict):
        return {k: _identity(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_identity(v) for v in obj]
    return obj
