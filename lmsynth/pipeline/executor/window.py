"""One window of rows through one distilabel pipeline: the runner's only way into distilabel.

`execute` builds the pipeline of a run plan over a window (`build_pipeline`: load → the stages' steps →
records), runs it with the framework patches of `patches` around it, and hands back every row's summary and
record in input order, or one line when a row is missing or a stage failed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lmsynth import constants
from lmsynth.errors import PipelineError
from lmsynth.llm import OpenAIModelConfig
from lmsynth.pipeline.config import PipelineConfig
from lmsynth.pipeline.executor import patches
from lmsynth.pipeline.output.sink import RowSummary, read_records
from lmsynth.pipeline.pipeline_row import PipelineRow
from lmsynth.pipeline.plan import RunPlan


_STEP_MODULES = ["lmsynth.pipeline.executor.steps", "distilabel.pipeline.local"]  # what the forkserver imports once


class WindowFolders(NamedTuple):
    """Where one window works: distilabel's folder, telemetry events, earlier windows' first occurrences, units."""

    work_dir: Path
    events_dir: Path | None = None
    seen_path: Path | None = None
    scratch_dir: Path | None = None


def build_pipeline(plan: RunPlan, rows: Sequence[PipelineRow], folders: WindowFolders) -> Any:
    """The distilabel Pipeline of `plan` over `rows` (not run): load → translate → flags → … → records.

    The last step writes the records into `work_dir/records` (see `lmsynth.pipeline.output.sink`).

    Every step batch is one cache unit of `batch_size` rows; STACK: keep it ≥ max_num_seqs / n so vLLM
    runs at capacity.
    """
    from distilabel.pipeline import Pipeline

    from lmsynth.pipeline.executor.steps import LoadRows, RecordSink, StepContext, stage_step, to_rows

    config, bs = plan.config, plan.config.batch_size
    work_dir = folders.work_dir
    context = StepContext(
        plan=plan, events_dir=folders.events_dir, seen_path=folders.seen_path, scratch_dir=folders.scratch_dir
    )
    with Pipeline(name=f"lmsynth-{config.name}", cache_dir=str(work_dir)) as pipeline:
        previous = LoadRows(name="load", data=to_rows(rows), batch_size=bs)
        for stage in plan.steps:
            step = stage_step(plan.stage(stage), context)
            previous >> step
            previous = step
        previous >> RecordSink(
            name="records",
            records_dir=str(work_dir / "records"),
            stages=plan.steps,
            llm_stages=plan.llm_stages,
            stage_modules=sorted({s.stage.module for s in plan.stages}),
            english=config.generate.english is not None,
            multiturn=config.second_turn is not None,
            judged=config.judge is not None,
            input_batch_size=bs,
        )
    return pipeline


def execute(
    plan: RunPlan, rows: Sequence[PipelineRow], folders: WindowFolders, *, only_window: bool = False
) -> list[FinishedRow]:
    """Build and run the pipeline of `plan` on one window; return every row's summary and record, in order.

    Raises:
        PipelineError: a row is missing, repeated or lacks a stage output (distilabel turns a failed batch
            into rows of None instead of raising; this is where that surfaces).
    """
    if not rows:
        return []
    framework_environ(plan.config)
    patches.apply()
    work_dir = folders.work_dir
    shutil.rmtree(work_dir, ignore_errors=True)  # lmsynth resumes from its own cache, never from distilabel's
    pipeline = build_pipeline(plan, rows, folders)
    # Served engines (`serve_models`) live beside the pipeline: steps run side by side and Ray step actors
    # reserve no GPUs. Only steps holding in-process engines (no served models) run one after another.
    engines = plan.in_process_engines
    try:
        load_groups = "sequential_step_execution" if engines > 1 else None
        with patches.datasets_cache_in(work_dir / "hf-datasets"):
            if plan.ray is not None:
                from lmsynth.pipeline.executor.on_ray import run_on_ray, tensor_parallel_of

                tp = tensor_parallel_of(plan.config) if engines else None
                distiset = run_on_ray(
                    pipeline, options=plan.ray, tensor_parallel=tp, use_cache=False, load_groups=load_groups
                )
            else:
                # Steps that hold an in-process vLLM engine keep distilabel's own start method (their engine
                # dwarfs what a fork inherits, and that path is the one tested with real engines), and so do
                # the steps of a run's only window: the runner holds no earlier window yet, and a forkserver
                # would import distilabel a second time (about 3 s of CPU, half of a small run's).
                starts = (
                    patches.steps_forked_from_a_small_process(_STEP_MODULES)
                    if engines == 0 and not only_window
                    else contextlib.nullcontext()
                )
                with starts:
                    distiset = patches.without_checkpoints(pipeline).run(use_cache=False, load_groups=load_groups)
            summaries = [RowSummary.model_validate_json(r["summary"]) for r in _distiset_rows(distiset)]
        records = {index: (unsafe, text) for index, unsafe, text in read_records(work_dir / "records")}
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return _check_rows(plan.config, rows, summaries, records)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def framework_environ(config: PipelineConfig) -> None:
    """What distilabel's step processes read from the environment they inherit: log levels and the server key.

    Quiet distilabel and vLLM (INFO on every batch and engine detail): the run shows a progress bar instead.
    A step process opens its `backend: openai` client itself and is started by distilabel from this
    process's environment, so the key (held since the command started) goes back there only for a
    pipeline that has such a model.
    """
    if not constants.DEBUG:
        # vLLM's warnings are about CPU kernel choices.
        constants.set_for_frameworks({"DISTILABEL_LOG_LEVEL": "WARNING", "VLLM_LOGGING_LEVEL": "ERROR"})
        # "No output files for step ...": the run checks every row itself and says what is missing, in one line.
        logging.getLogger("distilabel.distiset").setLevel(logging.ERROR)
        # "Generating train split" per window and step: the run has its own bar. `datasets` reads the variable
        # when imported, which distilabel does once the engines are starting (the import takes 0.5 s).
        if (datasets := sys.modules.get("datasets")) is not None:
            datasets.disable_progress_bars()
        else:
            constants.set_for_frameworks({"HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    key = constants.openai_api_key_from_env()
    if key and any(type(m) is OpenAIModelConfig for m in config.models.values()):
        constants.set_for_frameworks({constants.OPENAI_API_KEY_ENV: key})


def _distiset_rows(distiset: Any) -> Iterator[dict[str, Any]]:
    for name in distiset:
        for split in distiset[name].values():
            yield from split.to_list()


class FinishedRow(NamedTuple):
    """A row through every stage: its summary and its record (JSON)."""

    summary: RowSummary
    record: str


def _check_rows(
    config: PipelineConfig,
    rows: Sequence[PipelineRow],
    summaries: Sequence[RowSummary],
    records: dict[int, tuple[bool, str]],
) -> list[FinishedRow]:
    """Every input row exactly once, with every stage's output and a record; else a one-line error."""
    by_index: dict[int, RowSummary] = {}
    failed: dict[str, int] = {}
    for summary in summaries:
        if summary.row_index in by_index:
            raise PipelineError(f"pipeline `{config.name}` returned row {summary.row_index} twice")
        by_index[summary.row_index] = summary
        for stage in summary.failed:
            failed[stage] = failed.get(stage, 0) + 1
    if failed:
        detail = ", ".join(f"{s}: {n} rows" for s, n in failed.items())
        raise PipelineError(f"pipeline `{config.name}`: stages failed ({detail}); rerun to retry, see the log")
    missing = [r.row_index for r in rows if r.row_index not in by_index or r.row_index not in records]
    if missing:
        raise PipelineError(f"pipeline `{config.name}`: {len(missing)} rows missing from the output")
    return [FinishedRow(by_index[r.row_index], records[r.row_index][1]) for r in rows]
