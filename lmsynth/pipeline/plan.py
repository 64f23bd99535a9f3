"""A run plan: what a run needs to know about its pipeline, resolved once at its start and passed down.

The stages in order, each with its YAML block, its fingerprint (prompt texts read once), the model config
its step opens (at run time a served engine's, with that stage's in-flight share), its step processes;
which stages run as distilabel steps; the cache root and the Ray cluster. The runner resolves it from the
YAML (`resolve`), and once more with the served models when the engines are up (`RunPlan.serving`); the
window loop, the steps and `run.json` read it instead of querying the config again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from lmsynth.llm import VllmModelConfig
from lmsynth.pipeline.config import PipelineConfig, stage_fingerprint
from lmsynth.pipeline.engines.servers import stage_model, stage_replicas
from lmsynth.pipeline.executor.on_ray import RayOptions
from lmsynth.pipeline.stages.registry import STAGE, Stage


class StagePlan(NamedTuple):
    """One stage of a run."""

    name: str
    stage: Stage  # its registry entry
    block: Any  # its YAML block (None for a stage without one)
    fingerprint: str
    model: Any  # the model config its step opens; None for a stage that calls no model
    replicas: int  # step processes


@dataclass(frozen=True)
class RunPlan:
    """A pipeline resolved for one run."""

    config: PipelineConfig
    stages: tuple[StagePlan, ...]
    cache_root: Path
    ray: RayOptions | None = None

    def stage(self, name: str) -> StagePlan:
        """The plan of stage `name`."""
        return next(s for s in self.stages if s.name == name)

    @property
    def fingerprints(self) -> dict[str, str]:
        """Stage → fingerprint, in order (`run.json`'s `stage_fingerprints`)."""
        return {s.name: s.fingerprint for s in self.stages}

    @property
    def llm_stages(self) -> list[str]:
        """The stages that call a model, in order."""
        return [s.name for s in self.stages if s.stage.calls_model]

    @property
    def steps(self) -> list[str]:
        """The stages that run as distilabel steps (see `step_stages`)."""
        return step_stages(self.config)

    @property
    def in_process_engines(self) -> int:
        """Stages whose step holds its own vLLM engine (no served model): those steps run one at a time."""
        return sum(isinstance(s.model, VllmModelConfig) for s in self.stages)

    def serving(self, runtime: dict[str, Any]) -> RunPlan:
        """This plan with the served models of `serve_models` (model name → runtime config)."""
        stages = []
        for s in self.stages:
            model = stage_model(self.config, runtime, s.name) if s.model is not None else None
            stages.append(s._replace(model=model, replicas=stage_replicas(s.name, model)))
        return replace(self, stages=tuple(stages))


def resolve(config: PipelineConfig, *, cache_root: Path, ray: RayOptions | None = None) -> RunPlan:
    """The plan of `config` with the YAML's own models (before any engine is served)."""
    stages = []
    for name in config.stages():
        entry = STAGE[name]
        model = config.model_for(name) if entry.calls_model else None
        block = config.block(name) if entry.config is not None else None
        fp = stage_fingerprint(config, name)
        stages.append(StagePlan(name, entry, block, fp, model, stage_replicas(name, model)))
    return RunPlan(config=config, stages=tuple(stages), cache_root=Path(cache_root), ray=ray)


def step_stages(config: PipelineConfig) -> list[str]:
    """The stages that run as distilabel steps: all but `select` when no `second_turn` reads its picks.

    Records carry every response's score, not the picks, so without a second turn the selection would only
    ship every row (ten responses in v0.5) through one more process and back for nothing.
    """
    return [s for s in config.stages() if s != "select" or config.second_turn is not None]
