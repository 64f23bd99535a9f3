"""distilabel wrappers: an `LLM` over our `ChatModel`, and one tiny step per stage.

Each step only maps columns and calls the stage's pure function (`translate`, `mark_flags`, `generate`,
`judge`, `select`, `second_turn`). LLM steps consult the content-addressed `StageCache` per batch before
calling the model, which is what makes reruns resume and changed rows regenerate.
"""

# No `from __future__ import annotations`: distilabel inspects `StepInput` hints at run time.

import errno
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from distilabel.models.llms.base import LLM
from distilabel.steps import GlobalStep, LoadDataFromDicts, Step, StepInput, StepResources
from distilabel.steps.tasks import Task
from pydantic import Field, PrivateAttr

from lmsynth.llm import (
    ChatMessages,
    Completion,
    FakeModelConfig,
    OpenAIModelConfig,
    SamplingConfig,
    VllmModelConfig,
    open_chat_model,
)
from lmsynth.pipeline.cache import StageCache
from lmsynth.pipeline.executor import patches
from lmsynth.pipeline.output.sink import finish_rows
from lmsynth.pipeline.pipeline_row import INSTRUCTION_COLUMNS, PipelineRow, column
from lmsynth.pipeline.stages import registry as stages
from lmsynth.pipeline.stages.flags import FirstSeen, mark_flags
from lmsynth.pipeline.stages.select import SelectConfig, select
from lmsynth.pipeline.telemetry.events import append_event
from lmsynth.pipeline.telemetry.metering import MeteredChatModel


if TYPE_CHECKING:
    from lmsynth.pipeline.plan import RunPlan, StagePlan


class _Patched:
    """A step whose process applies lmsynth's framework patches when it loads (step processes start bare)."""

    def load(self) -> None:
        """`patches.apply()`, the modules of registered stages, then the step's own load."""
        patches.apply()
        stages.import_stage_modules(getattr(self, "stage_modules", ()))
        super().load()  # type: ignore[misc]


class LoadRows(_Patched, LoadDataFromDicts):
    """The generator step: the window's rows as distilabel dicts."""


class StepContext(NamedTuple):
    """What the runner gives every stage's step: the run plan and the paths of this run and window."""

    plan: "RunPlan"
    events_dir: Path | None
    seen_path: Path | None
    scratch_dir: Path | None


def stage_step(stage: "StagePlan", context: StepContext) -> Any:
    """The distilabel step that runs `stage`: the class the stage registry names, built for this run."""
    return _STEP_CLASSES[stage.stage.step].for_stage(stage, context)


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


class ChatModelLLM(LLM):
    """A distilabel `LLM` over any `ChatModel`; stages reach the model itself through `chat(...)`."""

    backend_config: Annotated[
        VllmModelConfig | OpenAIModelConfig | FakeModelConfig, Field(discriminator="backend")
    ] = Field(description="The backend to open in `load()`.")
    _model: Any = PrivateAttr(None)

    @property
    def model_name(self) -> str:
        """The configured model id (what distilabel records as `model_name`)."""
        return self.backend_config.model

    @property
    def model_id(self) -> str:
        """Same as `model_name`, for the `ChatModel` protocol."""
        return self.backend_config.model

    @property
    def revision(self) -> str | None:
        """The configured model revision."""
        return self.backend_config.revision

    def load(self) -> None:
        """Prepare logging only: the backend starts on the first `chat`, so a fully cached stage starts no engine."""
        super().load()

    def unload(self) -> None:
        """Close the backend (shuts a vLLM engine down)."""
        if self._model is not None:
            self._model.close()
            self._model = None

    def close(self) -> None:
        """`ChatModel` spelling of `unload`."""
        self.unload()

    def chat(
        self, conversations: Sequence[ChatMessages], *, sampling: SamplingConfig, json_schema: dict | None = None
    ) -> list[list[Completion]]:
        """Delegate to the backend, starting it on first use."""
        self.start()
        return self._model.chat(conversations, sampling=sampling, json_schema=json_schema)

    def start(self) -> None:
        """Open and load the backend once (an engine starts here, on the first batch that needs it)."""
        if self._model is None:
            self._model = open_chat_model(self.backend_config)
            self._model.load()

    def generate(  # type: ignore[override]  # no **kwargs: distilabel reads this signature
        self,
        inputs: list[list[dict[str, str]]],
        num_generations: int = 1,
        max_new_tokens: int = 512,
        temperature: float = 0.6,
        top_p: float = 1.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
    ) -> list[dict[str, Any]]:
        """The entry point distilabel calls: chat inputs in, `GenerateOutput` dicts with token statistics out."""
        sampling = SamplingConfig(
            max_tokens=max_new_tokens,
            n=num_generations,
            temperature=temperature,
            top_p=top_p,
            frequency_penalty=frequency_penalty,
            seed=seed,
        )
        outputs = []
        for completions in self.chat(inputs, sampling=sampling):
            outputs.append(
                {
                    "generations": [c.text for c in completions],
                    "statistics": {
                        "input_tokens": [c.prompt_tokens for c in completions],
                        "output_tokens": [c.completion_tokens for c in completions],
                    },
                }
            )
        return outputs


class StageTask(_Patched, Task):
    """An LLM stage (`translate`, `generate`, `judge`, `second_turn`) with the per-unit cache in front."""

    stage: str
    stage_config: str = Field(description="The stage block as JSON (parsed again in the worker).")
    cache_dir: str
    fingerprint: str
    events_dir: str | None = Field(None, description="Folder for per-batch telemetry events (None: no events).")
    scratch_dir: str | None = Field(None, description="The run's work folder, for unit files before their rename.")
    stage_modules: list[str] = Field(description="The module of the stage, imported when the step loads.")
    add_raw_output: bool = False
    add_raw_input: bool = False

    @classmethod
    def for_stage(cls, stage: "StagePlan", context: StepContext) -> "StageTask":
        """The step of an LLM stage, with its cache, events folder, model and step processes."""
        return cls(
            name=stage.name,
            stage=stage.name,
            stage_config=stage.block.model_dump_json(),
            stage_modules=[stage.stage.module],
            cache_dir=str(context.plan.cache_root),
            fingerprint=stage.fingerprint,
            events_dir=_text(context.events_dir),
            scratch_dir=_text(context.scratch_dir),
            llm=ChatModelLLM(backend_config=stage.model),
            input_batch_size=context.plan.config.batch_size,
            resources=StepResources(replicas=stage.replicas),
        )

    @property
    def inputs(self) -> list[str]:
        """Columns read: the instruction and earlier stage outputs."""
        return ["row_index", *INSTRUCTION_COLUMNS]

    @property
    def outputs(self) -> list[str]:
        """One JSON column named after the stage."""
        return [self.stage]

    def format_input(self, input: dict[str, Any]) -> ChatMessages:  # noqa: A002 — distilabel's name
        """Unused: stages build their own prompts (required by distilabel's abstract base)."""
        raise NotImplementedError("StageTask builds prompts in its stage function")

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:  # noqa: A002
        """Unused (see `format_input`)."""
        raise NotImplementedError("StageTask parses outputs in its stage function")

    def process(self, inputs: StepInput) -> Any:  # type: ignore[override]
        """Serve the batch from the cache, or run the stage and cache it."""
        rows = [PipelineRow.from_columns(r) for r in inputs]
        config = stages.parse_config(self.stage, self.stage_config)
        cache = StageCache(self.cache_dir, stage=self.stage, fingerprint=self.fingerprint, scratch=self.scratch_dir)
        model = MeteredChatModel(self.llm)
        try:
            unit = stages.run_unit(self.stage, rows, model=model, config=config, cache=cache)
            if self.events_dir is not None:
                append_event(
                    self.events_dir,
                    model.event(self.stage, rows=len(rows), cached=unit.cached, units_invalid=unit.invalid),
                )
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # A full disk fails the batch as distilabel fails one (no stage output), without its traceback in
            # the log: the run then stops with one line naming the full folder.
            yield [{**row, self.stage: None} for row in inputs]
            return
        yield [{**row, self.stage: out.encode("utf-8")} for row, out in zip(inputs, unit.outputs, strict=True)]


class FlagsStep(_Patched, GlobalStep):
    """Empty and duplicate flags need every row of the window, in input order: a global step.

    Duplicates are found across the whole run: `seen_path` holds the first occurrences of earlier windows.
    """

    seen_path: str | None = Field(None, description="`flags.FirstSeen` file of earlier windows (None: none).")

    @classmethod
    def for_stage(cls, stage: "StagePlan", context: StepContext) -> "FlagsStep":
        """The step of the flags stage, reading the first occurrences of earlier windows."""
        return cls(name=stage.name, seen_path=_text(context.seen_path))

    @property
    def inputs(self) -> list[str]:
        """Reads the translation."""
        return ["row_index", "translate"]

    @property
    def outputs(self) -> list[str]:
        """Writes the `flags` column."""
        return ["flags"]

    def process(self, inputs: StepInput) -> Any:  # type: ignore[override]
        """Flag the whole input at once."""
        seen = FirstSeen.read(self.seen_path) if self.seen_path else FirstSeen()
        flags = mark_flags((PipelineRow.from_columns(r) for r in inputs), seen=seen)
        yield [{**row, "flags": column(f)} for row, f in zip(inputs, flags, strict=True)]


class SelectStep(_Patched, Step):
    """Best-of-n and DPO pair per row (pure, not cached: it costs nothing)."""

    select_config: str = Field(description="The `select` block as JSON.")

    @classmethod
    def for_stage(cls, stage: "StagePlan", context: StepContext) -> "SelectStep":
        """The step of the select stage."""
        batch_size = context.plan.config.batch_size
        return cls(name=stage.name, select_config=stage.block.model_dump_json(), input_batch_size=batch_size)

    @property
    def inputs(self) -> list[str]:
        """Reads the judge scores."""
        return ["row_index", "judge"]

    @property
    def outputs(self) -> list[str]:
        """Writes the `select` column."""
        return ["select"]

    def process(self, inputs: StepInput) -> Any:  # type: ignore[override]
        """Select for the batch."""
        config = SelectConfig.model_validate_json(self.select_config)
        picks = select([PipelineRow.from_columns(r) for r in inputs], config=config)
        yield [{**row, "select": column(p)} for row, p in zip(inputs, picks, strict=True)]


class RecordSink(_Patched, Step):
    """The last step: writes each finished row's record into the window's files, returns only its summary."""

    records_dir: str = Field(description="The window's record folder (`sink.read_records` merges it).")
    stages: list[str] = Field(description="The pipeline's stages; a row without one of their outputs failed.")
    llm_stages: list[str]
    stage_modules: list[str] = Field(description="The modules of the stages, imported when the step loads.")
    english: bool = False
    multiturn: bool = False
    judged: bool = False

    @property
    def inputs(self) -> list[str]:
        """Every column: the instruction and each stage output."""
        return ["row_index", *INSTRUCTION_COLUMNS, *self.stages]

    @property
    def outputs(self) -> list[str]:
        """A `sink.RowSummary` as JSON."""
        return ["summary"]

    def process(self, inputs: StepInput) -> Any:  # type: ignore[override]
        """Assemble and write the batch's records."""
        summaries = finish_rows(
            inputs,
            stages=self.stages,
            llm_stages=self.llm_stages,
            english=self.english,
            multiturn=self.multiturn,
            judged=self.judged,
            records_dir=Path(self.records_dir),
        )
        yield [{"row_index": s.row_index, "summary": s.model_dump_json()} for s in summaries]


def to_rows(rows: Sequence[PipelineRow]) -> list[dict[str, Any]]:
    """Flat distilabel rows for the generator step."""
    return [r.to_columns() for r in rows]


_STEP_CLASSES: dict[str, Any] = {c.__name__: c for c in (StageTask, FlagsStep, SelectStep)}
