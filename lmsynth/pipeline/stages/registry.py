"""The stage registry: each pipeline stage once, in order, as config, runner, steps and telemetry know it.

Config validation, the runner, the distilabel steps and telemetry all read `STAGES`. A new stage is its
module (config model, function, row output, row view) and one `register(Stage(...))` call in it, which
appends it after the built-in stages: the YAML block of its name, its step, cache, fingerprint, tokens in
`run.json` and the run report follow (step processes import its module to know it). A model-calling stage's
`view` is exactly what it reads from a row, so a change anywhere else in the row (or upstream, when it does
not alter what this stage reads) keeps its cached units valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel, TypeAdapter

from lmsynth.llm import ChatModel
from lmsynth.pipeline.cache import StageCache
from lmsynth.pipeline.pipeline_row import STAGE_OUTPUTS, PipelineRow
from lmsynth.pipeline.stages.flags import mark_flags
from lmsynth.pipeline.stages.generate import GenerateConfig, generate, wants_english
from lmsynth.pipeline.stages.judge import JudgeConfig, judge
from lmsynth.pipeline.stages.second_turn import SecondTurnConfig, best_pair, second_turn
from lmsynth.pipeline.stages.select import SelectConfig, select
from lmsynth.pipeline.stages.translate import TranslateConfig, needs_translation, translate


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    config: Any  # the model of its YAML block (a type or an annotated union); None: it has no block
    function: Callable[..., Sequence[BaseModel]]  # rows in, one output per row
    calls_model: bool = False  # an LLM stage: cached per unit, metered, served by an engine
    view: Callable[[PipelineRow, Any], dict[str, Any]] | None = None  # what it reads (the cache key)
    needs: str | None = None  # it runs only when this stage runs
    step: str = "StageTask"  # its distilabel step class in `lmsynth.pipeline.executor.steps`
    generation_counts: tuple[str, ...] = ()  # `RunCounts` fields that count its outputs (n per request)
    legacy_failures: str | None = None  # `RunCounts` field of its failures in a run.json older than `Usage.failures`
    output: type[BaseModel] | None = None  # its row output model (the built-in ones: `rows.STAGE_OUTPUTS`)

    @property
    def module(self) -> str:
        """The module that defines (and, for a registered stage, registers) it: step processes import it."""
        return self.function.__module__

    def parse_config(self, text: str) -> Any:
        """Parse this stage's block from its JSON."""
        return _ADAPTERS[self.name].validate_json(text)


STAGES: list[Stage] = [
    Stage(
        "translate",
        TranslateConfig,
        translate,
        calls_model=True,
        view=lambda r, c: {
            "instruction": r.record.instruction if needs_translation(r, c) else None,
            "passthrough": None if needs_translation(r, c) else r.record.instruction,
        },
    ),
    Stage("flags", None, mark_flags, step="FlagsStep"),
    Stage(
        "generate",
        GenerateConfig,
        generate,
        calls_model=True,
        view=lambda r, c: {
            "ja": None if r.skipped else r.instruction_ja,
            "en": r.record.instruction if wants_english(r, c) else None,
        },
        generation_counts=("responses_ja", "responses_en"),
    ),
    Stage(
        "judge",
        JudgeConfig,
        judge,
        calls_model=True,
        view=lambda r, c: {
            "id": r.record.conversation_id,
            "instruction_ja": r.instruction_ja,
            "responses": r.generate.responses_ja if r.generate else [],
        },
        legacy_failures="judge_failures",
    ),
    Stage("select", SelectConfig, select, needs="judge", step="SelectStep"),
    Stage(
        "second_turn",
        SecondTurnConfig,
        second_turn,
        calls_model=True,
        view=lambda r, c: {"pair": best_pair(r)},
        needs="judge",
    ),
]
STAGE: dict[str, Stage] = {s.name: s for s in STAGES}
LLM_STAGES: list[str] = [s.name for s in STAGES if s.calls_model]


def register(stage: Stage) -> Stage:
    """Add `stage` after the stages already registered; its module calls this once, when imported.

    A model-calling stage needs a `view`, an `output` model with a `usage` field and a config block with
    `model` and `sampling`, like the built-in ones.

    Raises:
        ValueError: another stage (from another module) has that name.
    """
    if stage.name in STAGE:
        if STAGE[stage.name].module == stage.module:  # its module imported again
            return STAGE[stage.name]
        raise ValueError(f"stage `{stage.name}` is already registered by {STAGE[stage.name].module}")
    if stage.output is None or (stage.calls_model and stage.view is None):
        raise ValueError(f"stage `{stage.name}`: a registered stage needs an `output` model (and a `view`)")
    STAGES.append(stage)
    STAGE[stage.name] = stage
    if stage.calls_model:
        LLM_STAGES.append(stage.name)
    if stage.config is not None:
        _ADAPTERS[stage.name] = TypeAdapter(stage.config)
    STAGE_OUTPUTS[stage.name] = stage.output
    return stage


def unregister(name: str) -> None:
    """Remove a stage `register` added (tests that register one put the registry back)."""
    stage = STAGE.pop(name)
    STAGES.remove(stage)
    if name in LLM_STAGES:
        LLM_STAGES.remove(name)
    _ADAPTERS.pop(name, None)
    STAGE_OUTPUTS.pop(name, None)


def import_stage_modules(modules: Sequence[str]) -> None:
    """Import the modules that register stages (in a step process, which starts with the built-in ones)."""
    import importlib

    for module in modules:
        importlib.import_module(module)


def parse_block(stage: str, data: Any) -> Any:
    """Validate a stage block of the YAML."""
    return _ADAPTERS[stage].validate_python(data)


def parse_config(stage: str, text: str) -> Any:
    """Parse a stage block from its JSON."""
    return STAGE[stage].parse_config(text)


def view(stage: str, row: PipelineRow, config: Any) -> dict[str, Any]:
    """What `stage` reads from `row` (the cache unit key is the digest of these, in order)."""
    return STAGE[stage].view(row, config)  # type: ignore[misc]  # model-calling stages have one


def run_stage(stage: str, rows: Sequence[PipelineRow], *, model: ChatModel, config: Any) -> Sequence[BaseModel]:
    """Run one LLM stage on a batch."""
    return STAGE[stage].function(rows, model=model, config=config)


class UnitResult(NamedTuple):
    """A unit's stage outputs (JSON, one per row), whether the cache served them, and invalid units dropped."""

    outputs: list[str]
    cached: bool
    invalid: int = 0


def run_unit(
    stage: str, rows: Sequence[PipelineRow], *, model: ChatModel, config: Any, cache: StageCache
) -> UnitResult:
    """One cache unit: the stage outputs (JSON) for `rows`, from the cache or computed and then cached.

    A unit missing from the cache is computed under its lock, so a concurrent run that reaches the same unit
    waits for it and then reads it instead of computing it again. An invalid unit (`StageCache.read`) is
    never served: under the lock it is dropped, recomputed and counted.
    """
    key = cache.key([view(stage, r, config) for r in rows])
    found = cache.read(key, n_rows=len(rows))
    if found.outputs is not None:
        return UnitResult(found.outputs, cached=True)
    with cache.lock(key):
        found = cache.read(key, n_rows=len(rows))
        if found.outputs is not None:
            return UnitResult(found.outputs, cached=True)
        if found.invalid:
            cache.drop(key)
        outputs = [r.model_dump_json() for r in run_stage(stage, rows, model=model, config=config)]
        cache.put(key, outputs)
    return UnitResult(outputs, cached=False, invalid=int(found.invalid))


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------

_ADAPTERS: dict[str, TypeAdapter] = {s.name: TypeAdapter(s.config) for s in STAGES if s.config is not None}
