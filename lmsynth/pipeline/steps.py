"""distilabel wrappers: an `LLM` over our `ChatModel`, and one tiny step per stage.

Each step only maps columns and calls the stage's pure function (`translate`, `mark_flags`, `generate`,
`judge`, `select`, `second_turn`). LLM steps consult the content-addressed `StageCache` per batch before
calling the model, which is what makes reruns resume and changed rows regenerate.
"""

# No `from __future__ import annotations`: distilabel inspects `StepInput` hints at run time.

import errno
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from distilabel.models.llms.base import LLM
from distilabel.pipeline import base as distilabel_base
from distilabel.pipeline.batch import _Batch
from distilabel.steps import GlobalStep, Step, StepInput, StepResources
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
from lmsynth.pipeline import stages
from lmsynth.pipeline.cache import StageCache
from lmsynth.pipeline.config import stage_fingerprint
from lmsynth.pipeline.engines import stage_replicas
from lmsynth.pipeline.flags import FirstSeen, mark_flags
from lmsynth.pipeline.rows import INSTRUCTION_COLUMNS, PipelineRow, column
from lmsynth.pipeline.select import SelectConfig, select
from lmsynth.pipeline.sink import finish_rows
from lmsynth.pipeline.telemetry.events import append_event
from lmsynth.pipeline.telemetry.metering import MeteredChatModel


if TYPE_CHECKING:
    from lmsynth.pipeline.config import PipelineConfig


class StepContext(NamedTuple):
    """What the runner gives every stage's step besides the pipeline config (paths of this run and window)."""

    cache_root: Path
    events_dir: Path | None
    seen_path: Path | None
    scratch_dir: Path | None
    model_for: Callable[[str], Any]  # stage → the model config its step opens (a served engine's, at run time)


def stage_step(stage: str, config: "PipelineConfig", context: StepContext) -> Any:
    """The distilabel step that runs `stage`: the class the stage registry names, built for this run."""
    return _STEP_CLASSES[stages.STAGE[stage].step].for_stage(stage, config, context)


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


class StageTask(Task):
    """An LLM stage (`translate`, `generate`, `judge`, `second_turn`) with the per-unit cache in front."""

    stage: str
    stage_config: str = Field(description="The stage block as JSON (parsed again in the worker).")
    cache_dir: str
    fingerprint: str
    events_dir: str | None = Field(None, description="Folder for per-batch telemetry events (None: no events).")
    scratch_dir: str | None = Field(None, description="The run's work folder, for unit files before their rename.")
    add_raw_output: bool = False
    add_raw_input: bool = False

    @classmethod
    def for_stage(cls, stage: str, config: "PipelineConfig", context: StepContext) -> "StageTask":
        """The step of an LLM stage, with its cache, events folder, model and step processes."""
        model = context.model_for(stage)
        return cls(
            name=stage,
            stage=stage,
            stage_config=getattr(config, stage).model_dump_json(),
            cache_dir=str(context.cache_root),
            fingerprint=stage_fingerprint(config, stage),
            events_dir=_text(context.events_dir),
            scratch_dir=_text(context.scratch_dir),
            llm=ChatModelLLM(backend_config=model),
            input_batch_size=config.batch_size,
            resources=StepResources(replicas=stage_replicas(stage, model)),
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
                append_event(self.events_dir, model.event(self.stage, rows=len(rows), cached=unit.cached))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # A full disk fails the batch as distilabel fails one (no stage output), without its traceback in
            # the log: the run then stops with one line naming the full folder.
            yield [{**row, self.stage: None} for row in inputs]
            return
        yield [{**row, self.stage: out.encode("utf-8")} for row, out in zip(inputs, unit.outputs, strict=True)]


class FlagsStep(GlobalStep):
    """Empty and duplicate flags need every row of the window, in input order: a global step.

    Duplicates are found across the whole run: `seen_path` holds the first occurrences of earlier windows.
    """

    seen_path: str | None = Field(None, description="`flags.FirstSeen` file of earlier windows (None: none).")

    @classmethod
    def for_stage(cls, stage: str, config: "PipelineConfig", context: StepContext) -> "FlagsStep":
        """The step of the flags stage, reading the first occurrences of earlier windows."""
        return cls(name=stage, seen_path=_text(context.seen_path))

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


class SelectStep(Step):
    """Best-of-n and DPO pair per row (pure, not cached: it costs nothing)."""

    select_config: str = Field(description="The `select` block as JSON.")

    @classmethod
    def for_stage(cls, stage: str, config: "PipelineConfig", context: StepContext) -> "SelectStep":
        """The step of the select stage."""
        return cls(
            name=stage, select_config=getattr(config, stage).model_dump_json(), input_batch_size=config.batch_size
        )

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


class RecordSink(Step):
    """The last step: writes each finished row's record into the window's files, returns only its summary."""

    records_dir: str = Field(description="The window's record folder (`sink.read_records` merges it).")
    stages: list[str] = Field(description="The pipeline's stages; a row without one of their outputs failed.")
    llm_stages: list[str]
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


def without_checkpoints(pipeline: Any) -> Any:
    """Turn off distilabel's per-batch bookkeeping for resuming: lmsynth resumes from its own stage cache.

    distilabel 1.5.3 (`pipeline/base.py`), even with `use_cache=False`, after every batch it routes: saves the
    pipeline, its batch manager and every built batch's rows as JSON (`_cache`), and writes the batch's rows
    as JSON once more under `steps_data/<step signature>/` (`_register_batch`), recomputing the pipeline's
    signature each time. Its cost grows with the rows in flight; nothing reads those files when a run starts
    with `use_cache=False`. The batch is still registered with the batch manager, which routes it.
    """
    pipeline._cache = lambda: None
    pipeline._register_batch = lambda batch: pipeline._batch_manager.register_batch(batch)
    return pipeline


def _no_data_hash(self: _Batch) -> None:
    """No hash: distilabel hashes `str()` of a batch's rows whenever they change, for its cache files only."""
    self.data_hash = None


# In every process that imports the steps (the step processes too): the hash is computed on both sides of
# each hand-off, and `str()` of a batch of v0.5 rows (ten responses each) is megabytes.
_Batch._update_data_hash = _no_data_hash


class _QuickPolls:
    """distilabel's pipeline module as it sees `time`, with its polling sleeps cut to `POLL_S`.

    distilabel checks whether the steps of a stage have loaded every 2.5 s and whether they have finished
    every 0.5 s (`_run_stage_steps_and_wait`, `_finalize_pipeline_execution` in `pipeline/base.py`). Steps
    load in milliseconds here (forkserver, no engine inside), so every window of a run would otherwise idle
    ~3 s: ≈1.5 ms per instruction at the default window of 2,048 rows.
    """

    POLL_S = 0.05

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        """Sleep at most `POLL_S`: the callers poll in a loop, so they only check more often."""
        time.sleep(min(seconds, self.POLL_S))


distilabel_base.time = _QuickPolls()


def to_rows(rows: Sequence[PipelineRow]) -> list[dict[str, Any]]:
    """Flat distilabel rows for the generator step."""
    return [r.to_columns() for r in rows]


_STEP_CLASSES: dict[str, Any] = {c.__name__: c for c in (StageTask, FlagsStep, SelectStep)}
