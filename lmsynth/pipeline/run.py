"""`lmsynth run`: build a distilabel pipeline from a config, run it, write the run folder.

Output folder contract (`lmsynth.records`): `records/` (one SynthRecord per safe instruction, empty and
duplicate ones included without responses), `unsafe/` (translation fields of the flagged instructions) and
`run.json` (`RunInfo`), written last. Finished work lives in the stage cache (`lmsynth.pipeline.cache`), so
the same command after a crash or kill resumes instead of starting over.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from lmsynth import constants
from lmsynth.config import StrictModel
from lmsynth.errors import InputRecordError, PipelineError
from lmsynth.fingerprint import FINGERPRINT_VERSION, digest_rows
from lmsynth.io import atomic_dir, read_jsonl, write_json, write_jsonl
from lmsynth.llm import SamplingConfig, VllmModelConfig
from lmsynth.pipeline.assemble import to_synth_record, to_unsafe_record
from lmsynth.pipeline.cache import StageCache
from lmsynth.pipeline.config import (
    LLM_STAGES,
    PipelineConfig,
    load_pipeline_config,
    model_revision,
    run_fingerprint,
    stage_fingerprint,
)
from lmsynth.pipeline.engines import ENGINE_LOG_DIR, serve_models, stage_model
from lmsynth.pipeline.ray_exec import RayOptions
from lmsynth.pipeline.rows import PipelineRow, Usage
from lmsynth.pipeline.telemetry import Telemetry, report_from_run, visible_gpu_count, write_report
from lmsynth.records import (
    PREPARED_INSTRUCTIONS,
    PREPARED_UNSAFE,
    RUN_INFO_FILE,
    RUN_RECORDS_DIR,
    RUN_UNSAFE_DIR,
    InstructionRecord,
    SynthRecord,
)


logger = logging.getLogger(__name__)

RowFilter = Callable[[InstructionRecord], bool]


class ModelRef(StrictModel):
    """Which model a stage used."""

    backend: str
    model: str
    revision: str | None = None


class RunCounts(StrictModel):
    """What the run produced."""

    instructions: int = Field(ge=0, description="Safe instructions in (= records out).")
    unsafe: int = Field(ge=0)
    translated: int = Field(ge=0)
    empty: int = Field(ge=0)
    duplicate: int = Field(ge=0)
    responses_ja: int = Field(ge=0)
    responses_en: int = Field(ge=0)
    judge_failures: int = Field(ge=0, description="Responses whose rating could not be parsed.")
    multiturn: int = Field(ge=0)


class RunInfo(StrictModel):
    """`run.json`: enough to tell which pipeline, models, settings and inputs made a run folder."""

    pipeline: str
    fingerprint: str
    fingerprint_version: int = FINGERPRINT_VERSION
    input_digest: str
    stage_fingerprints: dict[str, str]
    models: dict[str, ModelRef] = Field(description="Stage → model (translate, generate, judge, second_turn).")
    generator: ModelRef
    judge: ModelRef | None = None
    sampling: dict[str, SamplingConfig]
    counts: RunCounts
    tokens: dict[str, Usage] = Field(description="Tokens per stage, over all rows (cached or not).")


class RunResult(StrictModel):
    """What `run_pipeline` returns."""

    out_dir: Path
    records: int
    unsafe: int
    fingerprint: str
    info: RunInfo
    units_generated: dict[str, int] = Field(description="Cache units computed by this run, per stage.")
    units_reused: dict[str, int] = Field(description="Cache units served from the cache, per stage.")


def run_pipeline(
    pipeline_path: Path | str,
    *,
    input_dir: Path | str,
    out_dir: Path | str,
    row_filter: RowFilter | None = None,
    config: PipelineConfig | None = None,
    cache_dir: Path | None = None,
    ray: RayOptions | None = None,
) -> RunResult:
    """Run a pipeline on a prepared folder and write the run folder.

    Args:
        pipeline_path: the pipeline YAML (`pipelines/<name>.yaml`).
        input_dir: a `lmsynth prepare` output folder (`instructions.jsonl`, `unsafe.jsonl`).
        out_dir: the run folder to write (records/, unsafe/, run.json).
        row_filter: keep only instructions for which this returns True (e.g. one shard of many).
        config: an already loaded config (overrides reading `pipeline_path`).
        cache_dir: the cache root (default `constants.CACHE_DIR`).
        ray: run the steps on this Ray cluster (`lmsynth.pipeline.ray_exec`) instead of local processes.

    Returns:
        Counts, fingerprint, `RunInfo` and cache statistics.

    Raises:
        ConfigError: the YAML is invalid.
        InputRecordError: an input line is invalid.
        PipelineError: the input folder is missing, or a stage failed for some rows.
    """
    config = config or load_pipeline_config(pipeline_path)
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    cache_root = Path(cache_dir or constants.CACHE_DIR)
    rows = load_rows(input_dir, limit=config.limit, row_filter=row_filter)
    input_digest = digest_rows(r.record for r in rows)
    fp = run_fingerprint(config, input_digest=input_digest)
    # 1. Run the stages (cached units are reused inside the steps).
    stage_fps = {s: stage_fingerprint(config, s) for s in config.stages()}
    before = {s: set(StageCache(cache_root, stage=s, fingerprint=f).units()) for s, f in stage_fps.items()}
    work_dir = cache_root / "distilabel" / fp[:16]
    events_dir = cache_root / "telemetry" / fp[:16]
    shutil.rmtree(events_dir, ignore_errors=True)  # events of a killed earlier attempt would count twice
    llm_stages = [s for s in config.stages() if s in LLM_STAGES]
    telemetry = Telemetry(total_requests=len(rows) * len(llm_stages), gpus=_gpus(config))
    with (
        telemetry.follow(events_dir),
        telemetry.display(f"Running {config.name}"),
        serve_models(config, log_dir=out_dir / ENGINE_LOG_DIR, cache_root=cache_root, telemetry=telemetry) as models,
    ):
        finished = execute(
            config, rows, cache_root=cache_root, work_dir=work_dir, ray=ray, events_dir=events_dir, models=models
        )
    after = {s: set(StageCache(cache_root, stage=s, fingerprint=f).units()) for s, f in stage_fps.items()}
    generated = {s: len(after[s] - before[s]) for s in before if s in LLM_STAGES}
    total_units = {s: len(after[s]) for s in generated}
    # 2. Assemble records, then write: run.json goes last, so its presence marks a complete folder.
    english = config.generate.english is not None
    multiturn = config.second_turn is not None
    safe = [to_synth_record(r, english=english, multiturn=multiturn) for r in finished if not r.record.flagged]
    unsafe = [to_unsafe_record(r) for r in finished if r.record.flagged]
    info = _run_info(config, finished, safe, unsafe, fingerprint=fp, input_digest=input_digest, stage_fps=stage_fps)
    (out_dir / RUN_INFO_FILE).unlink(missing_ok=True)
    _write_shards(out_dir / RUN_RECORDS_DIR, safe, per_file=config.shard_records)
    _write_shards(out_dir / RUN_UNSAFE_DIR, unsafe, per_file=config.shard_records)
    write_json(out_dir / RUN_INFO_FILE, info.model_dump(mode="json"))
    write_report(out_dir, report_from_run(out_dir, telemetry=telemetry))
    return RunResult(
        out_dir=out_dir,
        records=len(safe),
        unsafe=len(unsafe),
        fingerprint=fp,
        info=info,
        units_generated=generated,
        units_reused={s: max(total_units[s] - generated[s], 0) for s in generated},
    )


def load_rows(input_dir: Path, *, limit: int | None = None, row_filter: RowFilter | None = None) -> list[PipelineRow]:
    """Prepared instructions (safe first, then unsafe ones flagged), limited and filtered, with positions.

    Raises:
        PipelineError: `instructions.jsonl` is missing.
        InputRecordError: a line is invalid, or a conversation id repeats.
    """
    path = input_dir / PREPARED_INSTRUCTIONS
    if not path.is_file():
        raise PipelineError(f"{input_dir}: not a prepared folder (no {PREPARED_INSTRUCTIONS}); run `lmsynth prepare`")
    records: list[InstructionRecord] = []
    seen: set[str] = set()
    for name, flagged in ((PREPARED_INSTRUCTIONS, False), (PREPARED_UNSAFE, True)):
        f = input_dir / name
        if not f.is_file():
            continue
        kept = 0
        for lineno, rec in enumerate(read_jsonl(f, InstructionRecord), start=1):
            if limit is not None and kept >= limit:
                break
            if rec.conversation_id in seen:
                raise InputRecordError(f, lineno, "conversation_id", f"`{rec.conversation_id}` appears twice")
            seen.add(rec.conversation_id)
            if rec.flagged != flagged:
                rec = rec.model_copy(update={"flagged": flagged})
            if row_filter is None or row_filter(rec):
                records.append(rec)
            kept += 1
    return [PipelineRow(row_index=i, record=r) for i, r in enumerate(records)]


def build_pipeline(
    config: PipelineConfig,
    rows: Sequence[PipelineRow],
    *,
    cache_root: Path,
    work_dir: Path,
    events_dir: Path | None = None,
    models: dict[str, Any] | None = None,
) -> Any:
    """The distilabel Pipeline for `config` over `rows` (not run): load → translate → flags → generate → ….

    Every step batch is one cache unit of `config.batch_size` rows; STACK: keep it ≥ max_num_seqs / n so
    vLLM runs at capacity. `models` are the runtime model configs of `serve_models` (default: the YAML's).
    """
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from lmsynth.pipeline.steps import ChatModelLLM, FlagsStep, SelectStep, StageTask, to_rows

    bs = config.batch_size
    with Pipeline(name=f"lmsynth-{config.name}", cache_dir=str(work_dir)) as pipeline:
        previous = LoadDataFromDicts(name="load", data=to_rows(rows), batch_size=bs)
        for stage in config.stages():
            if stage == "flags":
                step = FlagsStep(name="flags")
            elif stage == "select":
                step = SelectStep(name="select", select_config=config.select.model_dump_json(), input_batch_size=bs)
            else:
                step = StageTask(
                    name=stage,
                    stage=stage,
                    stage_config=getattr(config, stage).model_dump_json(),
                    cache_dir=str(cache_root),
                    fingerprint=stage_fingerprint(config, stage),
                    events_dir=str(events_dir) if events_dir is not None else None,
                    llm=ChatModelLLM(backend_config=_stage_model(config, models, stage)),
                    input_batch_size=bs,
                )
            previous >> step
            previous = step
    return pipeline


def execute(
    config: PipelineConfig,
    rows: Sequence[PipelineRow],
    *,
    cache_root: Path,
    work_dir: Path,
    ray: RayOptions | None = None,
    events_dir: Path | None = None,
    models: dict[str, Any] | None = None,
) -> list[PipelineRow]:
    """Build and run the pipeline; return every row with its stage outputs, in input order.

    Raises:
        PipelineError: a row is missing, repeated or lacks a stage output (distilabel turns a failed batch
            into rows of None instead of raising; this is where that surfaces).
    """
    if not rows:
        return []
    _quiet_libraries()
    # A killed run leaves distilabel's working folder behind; lmsynth resumes from its own cache, not that one.
    shutil.rmtree(work_dir, ignore_errors=True)
    pipeline = build_pipeline(
        config, rows, cache_root=cache_root, work_dir=work_dir, events_dir=events_dir, models=models
    )
    # No engine lives in a step (`serve_models` runs them beside the pipeline): steps run side by side and
    # Ray step actors reserve no GPUs (the servers hold them, on the driver's node).
    try:
        if ray is not None:
            from lmsynth.pipeline.ray_exec import run_on_ray

            distiset = run_on_ray(pipeline, options=ray, use_cache=False)
        else:
            distiset = pipeline.run(use_cache=False)
        out = list(_distiset_rows(distiset))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return _check_rows(config, rows, out)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _quiet_libraries() -> None:
    """Quiet distilabel and vLLM (INFO on every batch and engine detail): the run shows a progress bar instead.

    Set in the environment because the step and engine processes read it when they start.
    """
    if not constants.DEBUG:
        os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its warnings are about CPU kernel choices


def _stage_model(config: PipelineConfig, models: dict[str, Any] | None, stage: str) -> Any:
    return stage_model(config, models, stage) if models else config.model_for(stage)


def _gpus(config: PipelineConfig) -> int:
    """GPUs the run holds: visible ones when any stage runs an in-process vLLM engine, else none."""
    if not any(isinstance(config.model_for(s), VllmModelConfig) for s in config.stages() if s in LLM_STAGES):
        return 0
    return visible_gpu_count()


def _distiset_rows(distiset: Any) -> Iterator[dict[str, Any]]:
    for name in distiset:
        for split in distiset[name].values():
            yield from split.to_list()


def _check_rows(config: PipelineConfig, rows: Sequence[PipelineRow], out: list[dict[str, Any]]) -> list[PipelineRow]:
    by_index: dict[int, PipelineRow] = {}
    failed: dict[str, int] = {}
    for raw in out:
        idx = raw.get("row_index")
        if idx is None or idx in by_index:
            raise PipelineError(f"pipeline `{config.name}` returned a row twice or without its index ({idx})")
        for stage in config.stages():
            if not raw.get(stage):
                failed[stage] = failed.get(stage, 0) + 1
        if not any(not raw.get(s) for s in config.stages()):
            by_index[idx] = PipelineRow.from_columns(raw)
    if failed:
        detail = ", ".join(f"{s}: {n} rows" for s, n in failed.items())
        raise PipelineError(f"pipeline `{config.name}`: stages failed ({detail}); rerun to retry, see the log")
    missing = [r.row_index for r in rows if r.row_index not in by_index]
    if missing:
        raise PipelineError(f"pipeline `{config.name}`: {len(missing)} rows missing from the output")
    return [by_index[r.row_index] for r in rows]


def _write_shards(folder: Path, records: Sequence[SynthRecord], *, per_file: int) -> None:
    with atomic_dir(folder) as tmp:
        for k in range(0, max(len(records), 1), per_file):
            write_jsonl(tmp / f"part-{k // per_file:05d}.jsonl", records[k : k + per_file])


def _ref(model: Any) -> ModelRef:
    return ModelRef(backend=model.backend, model=model.model, revision=model_revision(model))


def _run_info(
    config: PipelineConfig,
    rows: Sequence[PipelineRow],
    safe: Sequence[SynthRecord],
    unsafe: Sequence[SynthRecord],
    *,
    fingerprint: str,
    input_digest: str,
    stage_fps: dict[str, str],
) -> RunInfo:
    llm_stages = [s for s in config.stages() if s in LLM_STAGES]
    tokens: dict[str, Usage] = {s: Usage() for s in llm_stages}
    for row in rows:
        for s in llm_stages:
            out = getattr(row, s)
            if out is not None:
                tokens[s] = tokens[s] + out.usage
    sampling = {s: getattr(config, s).sampling for s in llm_stages}
    counts = RunCounts(
        instructions=len(safe),
        unsafe=len(unsafe),
        translated=sum(1 for r in rows if r.translate and r.translate.translated),
        empty=sum(1 for r in safe if r.empty_user_instruction_ja),
        duplicate=sum(1 for r in safe if r.duplicate_user_instruction_ja),
        responses_ja=sum(len(r.synthesized_assistant_responses) for r in safe),
        responses_en=sum(len(r.synthesized_assistant_responses_en or []) for r in safe),
        judge_failures=sum(
            1 for r in safe for a in r.synthesized_response_scoring_annotations if a.preference_score is None
        )
        if config.judge
        else 0,
        multiturn=sum(1 for r in safe if r.synthesized_multiturn_conversation),
    )
    return RunInfo(
        pipeline=config.name,
        fingerprint=fingerprint,
        input_digest=input_digest,
        stage_fingerprints=stage_fps,
        models={s: _ref(config.model_for(s)) for s in llm_stages},
        generator=_ref(config.model_for("generate")),
        judge=_ref(config.model_for("judge")) if config.judge else None,
        sampling=sampling,
        counts=counts,
        tokens=tokens,
    )
