"""`lmsynth run`: build a distilabel pipeline from a config, run it, write the run folder.

Output folder contract (`lmsynth.records`): `records/` (one SynthRecord per safe instruction, empty and
duplicate ones included without responses), `unsafe/` (translation fields of the flagged instructions) and
`run.json` (`RunInfo`), written last. Finished work lives in the stage cache (`lmsynth.pipeline.cache`), so
the same command after a crash or kill resumes instead of starting over.

The input streams through in windows of `config.window` rows, one distilabel pipeline per window
(`build_pipeline` is where stage configs become step LLMs); `run_pipeline` holds the whole multi-window
run, so anything that must outlive a window (an engine served per model) wraps its window loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import Field

from lmsynth import constants
from lmsynth.config import StrictModel
from lmsynth.errors import InputRecordError, PipelineError
from lmsynth.faults import kill_point
from lmsynth.fingerprint import digest_rows
from lmsynth.io import atomic_dir, read_jsonl
from lmsynth.llm import VllmModelConfig
from lmsynth.pipeline.cache import StageCache
from lmsynth.pipeline.config import (
    PipelineConfig,
    load_pipeline_config,
    model_revision,
    run_fingerprint,
    stage_fingerprint,
)
from lmsynth.pipeline.engines import ENGINE_LOG_DIR, EngineServer, serve_models, stage_model
from lmsynth.pipeline.flags import FirstSeen
from lmsynth.pipeline.ray_engines import RayEngineServer
from lmsynth.pipeline.ray_exec import RayOptions, ray_cluster
from lmsynth.pipeline.rows import PipelineRow
from lmsynth.pipeline.sink import RowSummary, read_records
from lmsynth.pipeline.telemetry.collector import Telemetry, visible_gpu_count
from lmsynth.pipeline.telemetry.report_files import report_from_run, write_report
from lmsynth.pipeline.workdir import run_work_dir, unit_lock
from lmsynth.records import (
    PREPARED_INSTRUCTIONS,
    PREPARED_MARKER,
    PREPARED_UNSAFE,
    RUN_INFO_FILE,
    RUN_RECORDS_DIR,
    RUN_UNSAFE_DIR,
    InstructionRecord,
    RunCounts,
    RunInfo,
    StageModel,
    Usage,
    write_run_info,
)


logger = logging.getLogger(__name__)

RowFilter = Callable[[InstructionRecord], bool]


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
    """Run a pipeline on a prepared folder and write the run folder, one window of rows at a time.

    The input is read lazily; each window of `config.window` rows runs through the whole distilabel pipeline,
    and its records are appended to the run folder's temporary `records/` and `unsafe/` before the next
    window is read, so memory does not grow with the input. The flags stage's duplicate index is carried
    from window to window. The finished folders replace the old ones at the end and `run.json` comes last.

    Args:
        pipeline_path: the pipeline YAML (`pipelines/<name>.yaml`).
        input_dir: a finished `lmsynth prepare` output folder (`instructions.jsonl`, `unsafe.jsonl`, `_COMPLETE`).
        out_dir: the run folder to write (records/, unsafe/, run.json).
        row_filter: keep only instructions for which this returns True (e.g. one shard of many).
        config: an already loaded config (overrides reading `pipeline_path`).
        cache_dir: the cache root (default `constants.CACHE_DIR`).
        ray: run the steps on this Ray cluster (`lmsynth.pipeline.ray_exec`) instead of local processes, and
            serve each vLLM model from a Ray actor holding its GPUs (`lmsynth.pipeline.ray_engines`).

    Returns:
        Counts, fingerprint, `RunInfo` and cache statistics.

    Raises:
        ConfigError: the YAML is invalid.
        InputRecordError: an input line is invalid.
        PipelineError: the input folder is missing or unfinished, or a stage failed for some rows.
    """
    config = config or load_pipeline_config(pipeline_path)
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    cache_root = Path(cache_dir or constants.CACHE_DIR)
    scan = scan_input(input_dir, limit=config.limit, row_filter=row_filter)
    fp = run_fingerprint(config, input_digest=scan.digest)
    stage_fps = {s: stage_fingerprint(config, s) for s in config.stages()}
    llm_stages = config.model_stages()
    telemetry = Telemetry(total_requests=scan.rows * len(llm_stages), gpus=_gpus(config))
    totals = RunTotals(config)
    # One run per output folder at a time (a second one waits, then reuses the cache); leftovers of killed
    # runs in it are removed first.
    with out_folder_lock(out_dir), run_work_dir(cache_root) as work:
        clean_run_folder(out_dir)
        for stage in llm_stages:
            StageCache(cache_root, stage=stage, fingerprint=stage_fps[stage]).sweep()
        kill_point("run.caching", cache_root)
        with (
            atomic_dir(out_dir / RUN_RECORDS_DIR) as records_tmp,
            atomic_dir(out_dir / RUN_UNSAFE_DIR) as unsafe_tmp,
        ):
            safe_out = ShardedWriter(records_tmp, per_file=config.shard_records)
            unsafe_out = ShardedWriter(unsafe_tmp, per_file=config.shard_records)
            events_dir = work / "telemetry"
            # One engine per model for the whole run, shared by every window and stage; under `--ray` each
            # lives in a Ray actor holding its GPUs, so the cluster is held for the whole run.
            with (
                ray_cluster(ray) if ray is not None else contextlib.nullcontext(),
                telemetry.follow(events_dir),
                telemetry.display(f"Running {config.name}"),
                serve_models(
                    config,
                    log_dir=out_dir / ENGINE_LOG_DIR,
                    cache_root=cache_root,
                    telemetry=telemetry,
                    server=EngineServer if ray is None else RayEngineServer,
                ) as models,
            ):
                rows = iter_rows(input_dir, limit=config.limit, row_filter=row_filter)
                for finished in _stream(config, rows, cache_root=cache_root, work=work, ray=ray, models=models):
                    kill_point("run.writing", out_dir)
                    for row in finished:
                        totals.add(row.summary)
                        (unsafe_out if row.summary.unsafe else safe_out).write(row.record)
            safe_out.close()
            unsafe_out.close()
            # run.json goes before the new folders replace the old ones and comes back last: its presence
            # marks a complete folder.
            (out_dir / RUN_INFO_FILE).unlink(missing_ok=True)
        info = totals.info(fingerprint=fp, input_digest=scan.digest, stage_fps=stage_fps)
        write_run_info(out_dir, info)
        write_report(out_dir, report_from_run(out_dir, telemetry=telemetry))
    units = telemetry.units()
    return RunResult(
        out_dir=out_dir,
        records=info.counts.instructions,
        unsafe=info.counts.unsafe,
        fingerprint=fp,
        info=info,
        units_generated={s: units.get(s, (0, 0))[0] for s in llm_stages},
        units_reused={s: units.get(s, (0, 0))[1] for s in llm_stages},
    )


class InputScan(StrictModel):
    """One pass over the input: its digest (the run fingerprint covers it) and how many rows it has."""

    digest: str
    rows: int = Field(ge=0)


def scan_input(input_dir: Path, *, limit: int | None = None, row_filter: RowFilter | None = None) -> InputScan:
    """Digest and count the rows a run will read, checking ids, without holding them.

    Raises:
        PipelineError: the folder is not a finished prepared folder.
        InputRecordError: a line is invalid, or a conversation id repeats.
    """
    seen: set[str] = set()
    count = 0

    def checked() -> Iterator[InstructionRecord]:
        nonlocal count
        for path, lineno, rec in _iter_input(input_dir, limit=limit):
            if rec.conversation_id in seen:
                raise InputRecordError(path, lineno, "conversation_id", f"`{rec.conversation_id}` appears twice")
            seen.add(rec.conversation_id)
            if row_filter is None or row_filter(rec):
                count += 1
                yield rec

    digest = digest_rows(checked())
    return InputScan(digest=digest, rows=count)


def iter_rows(
    input_dir: Path, *, limit: int | None = None, row_filter: RowFilter | None = None
) -> Iterator[PipelineRow]:
    """Prepared instructions (safe first, then unsafe ones flagged), limited and filtered, with positions.

    Raises:
        PipelineError: the folder is not a finished prepared folder.
        InputRecordError: a line is invalid.
    """
    index = 0
    for _, _, rec in _iter_input(input_dir, limit=limit):
        if row_filter is None or row_filter(rec):
            yield PipelineRow(row_index=index, record=rec)
            index += 1


def load_rows(input_dir: Path, *, limit: int | None = None, row_filter: RowFilter | None = None) -> list[PipelineRow]:
    """All rows of `iter_rows` in a list, for small inputs and tests; runs stream them instead.

    Raises:
        PipelineError: the folder is not a finished prepared folder.
        InputRecordError: a line is invalid, or a conversation id repeats.
    """
    scan_input(input_dir, limit=limit, row_filter=row_filter)
    return list(iter_rows(input_dir, limit=limit, row_filter=row_filter))


def _stream(
    config: PipelineConfig,
    rows: Iterable[PipelineRow],
    *,
    cache_root: Path,
    work: Path,
    ray: RayOptions | None,
    models: dict[str, Any] | None = None,
) -> Iterator[list[FinishedRow]]:
    """Run the pipeline window by window; yield each window's finished rows, in input order."""
    seen = FirstSeen()
    for window in windows(rows, config):
        seen_path = None
        if seen.first:
            seen_path = work / "flags-first-seen.json"
            seen.write(seen_path)
        finished = execute(
            config,
            window,
            cache_root=cache_root,
            work_dir=work / "distilabel",
            ray=ray,
            events_dir=work / "telemetry",
            seen_path=seen_path,
            scratch_dir=work / "units",
            models=models,
        )
        for row, done in zip(window, finished, strict=True):
            if done.summary.first_key is not None:
                seen.add(done.summary.first_key, row.record.conversation_id)
        yield finished


def windows(rows: Iterable[PipelineRow], config: PipelineConfig) -> Iterator[list[PipelineRow]]:
    """Consecutive lists of `config.window` rows, rounded up to whole batches so cache units never straddle."""
    size = -(-config.window // config.batch_size) * config.batch_size
    chunk: list[PipelineRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_pipeline(
    config: PipelineConfig,
    rows: Sequence[PipelineRow],
    *,
    cache_root: Path,
    work_dir: Path,
    events_dir: Path | None = None,
    models: dict[str, Any] | None = None,
    seen_path: Path | None = None,
    scratch_dir: Path | None = None,
) -> Any:
    """The distilabel Pipeline for `config` over `rows` (not run): load → translate → flags → … → records.

    The last step writes the records into `work_dir/records` (see `lmsynth.pipeline.sink`).

    Every step batch is one cache unit of `config.batch_size` rows; STACK: keep it ≥ max_num_seqs / n so
    vLLM runs at capacity. `models` are the runtime model configs of `serve_models` (default: the YAML's).
    """
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from lmsynth.pipeline.steps import RecordSink, StepContext, stage_step, to_rows

    bs = config.batch_size
    steps = step_stages(config)
    context = StepContext(
        cache_root=cache_root,
        events_dir=events_dir,
        seen_path=seen_path,
        scratch_dir=scratch_dir,
        model_for=lambda stage: _stage_model(config, models, stage),
    )
    with Pipeline(name=f"lmsynth-{config.name}", cache_dir=str(work_dir)) as pipeline:
        previous = LoadDataFromDicts(name="load", data=to_rows(rows), batch_size=bs)
        for stage in steps:
            step = stage_step(stage, config, context)
            previous >> step
            previous = step
        previous >> RecordSink(
            name="records",
            records_dir=str(work_dir / "records"),
            stages=steps,
            llm_stages=config.model_stages(),
            english=config.generate.english is not None,
            multiturn=config.second_turn is not None,
            judged=config.judge is not None,
            input_batch_size=bs,
        )
    return pipeline


def step_stages(config: PipelineConfig) -> list[str]:
    """The stages that run as distilabel steps: all but `select` when no `second_turn` reads its picks.

    Records carry every response's score, not the picks, so without a second turn the selection would only
    ship every row (ten responses in v0.5) through one more process and back for nothing.
    """
    return [s for s in config.stages() if s != "select" or config.second_turn is not None]


def execute(
    config: PipelineConfig,
    rows: Sequence[PipelineRow],
    *,
    cache_root: Path,
    work_dir: Path,
    ray: RayOptions | None = None,
    events_dir: Path | None = None,
    models: dict[str, Any] | None = None,
    seen_path: Path | None = None,
    scratch_dir: Path | None = None,
) -> list[FinishedRow]:
    """Build and run the pipeline; return every row's summary and record, in input order.

    Raises:
        PipelineError: a row is missing, repeated or lacks a stage output (distilabel turns a failed batch
            into rows of None instead of raising; this is where that surfaces).
    """
    if not rows:
        return []
    from lmsynth.pipeline.steps import without_checkpoints

    _quiet_libraries()
    shutil.rmtree(work_dir, ignore_errors=True)  # lmsynth resumes from its own cache, never from distilabel's
    pipeline = build_pipeline(
        config,
        rows,
        cache_root=cache_root,
        work_dir=work_dir,
        events_dir=events_dir,
        seen_path=seen_path,
        scratch_dir=scratch_dir,
        models=models,
    )
    # Served engines (`serve_models`) live beside the pipeline: steps run side by side and Ray step actors
    # reserve no GPUs. Only steps holding in-process engines (no `models` given) run one after another.
    engines = sum(isinstance(_stage_model(config, models, s), VllmModelConfig) for s in config.model_stages())
    try:
        load_groups = "sequential_step_execution" if engines > 1 else None
        with _datasets_cache_in(work_dir / "hf-datasets"):
            if ray is not None:
                from lmsynth.pipeline.ray_exec import run_on_ray, tensor_parallel_of

                tp = tensor_parallel_of(config) if engines else None
                distiset = run_on_ray(
                    pipeline, options=ray, tensor_parallel=tp, use_cache=False, load_groups=load_groups
                )
            else:
                # Steps that hold an in-process vLLM engine keep distilabel's own start method (their engine
                # dwarfs what a fork inherits, and that path is the one tested with real engines).
                starts = _forked_from_a_small_process() if engines == 0 else contextlib.nullcontext()
                with starts:
                    distiset = without_checkpoints(pipeline).run(use_cache=False, load_groups=load_groups)
            summaries = [RowSummary.model_validate_json(r["summary"]) for r in _distiset_rows(distiset)]
        records = {index: (unsafe, text) for index, unsafe, text in read_records(work_dir / "records")}
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return _check_rows(config, rows, summaries, records)


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
        # "No output files for step ...": the run checks every row itself and says what is missing, in one line.
        logging.getLogger("distilabel.distiset").setLevel(logging.ERROR)
        import datasets

        datasets.disable_progress_bars()  # "Generating train split" per window and step: the run has its own bar


def _stage_model(config: PipelineConfig, models: dict[str, Any] | None, stage: str) -> Any:
    return stage_model(config, models, stage) if models else config.model_for(stage)


@contextlib.contextmanager
def _datasets_cache_in(folder: Path) -> Iterator[None]:
    """Keep the copy `datasets` makes of distilabel's output in the work folder, not in its own cache.

    distilabel loads the leaf step's Parquet through `datasets.load_dataset`, which copies it into
    `~/.cache/huggingface/datasets` and never removes it.
    """
    import datasets

    previous = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = folder
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = previous


@contextlib.contextmanager
def _forked_from_a_small_process() -> Iterator[None]:
    """Start distilabel's step processes from a forkserver that has imported the steps, not from this process.

    distilabel starts one process per step with the default start method; on Linux that forks this process,
    and each child then carries (and `ps` counts) everything this process holds, which grows with every
    window run so far. A forkserver is started once and stays small, so step processes cost the same in the
    last window as in the first, and start in milliseconds with their imports done.
    """
    import multiprocessing as mp

    from distilabel.pipeline import local

    class _Context(mp.context.ForkServerContext):
        Process = local._NoDaemonProcess  # distilabel's pool workers may start processes (vLLM)

    previous, original = mp.get_start_method(allow_none=True), local._NoDaemonContext
    mp.set_forkserver_preload(["lmsynth.pipeline.steps", "distilabel.pipeline.local"])
    # Both: distilabel's queues come from the default context, its pool from its own context class.
    mp.set_start_method("forkserver", force=True)
    local._NoDaemonContext = _Context
    try:
        yield
    finally:
        local._NoDaemonContext = original
        mp.set_start_method(previous, force=True)


def _gpus(config: PipelineConfig) -> int:
    """GPUs the run holds: visible ones when any stage runs an in-process vLLM engine, else none."""
    if not any(isinstance(config.model_for(s), VllmModelConfig) for s in config.model_stages()):
        return 0
    return visible_gpu_count()


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


def _iter_input(input_dir: Path, *, limit: int | None) -> Iterator[tuple[Path, int, InstructionRecord]]:
    """(file, line, record) of a finished prepared folder: safe ones, then unsafe ones flagged."""
    path = input_dir / PREPARED_INSTRUCTIONS
    if not path.is_file():
        raise PipelineError(f"{input_dir}: not a prepared folder (no {PREPARED_INSTRUCTIONS}); run `lmsynth prepare`")
    if not (input_dir / PREPARED_MARKER).is_file():
        raise PipelineError(
            f"{input_dir}: unfinished prepared folder (no {PREPARED_MARKER} marker); run `lmsynth prepare` again"
        )
    for name, flagged in ((PREPARED_INSTRUCTIONS, False), (PREPARED_UNSAFE, True)):
        f = input_dir / name
        if not f.is_file():
            continue
        for lineno, rec in enumerate(read_jsonl(f, InstructionRecord), start=1):
            if limit is not None and lineno > limit:
                break
            yield f, lineno, rec if rec.flagged == flagged else rec.model_copy(update={"flagged": flagged})


def out_folder_lock(out_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The lock of a run folder (`.<name>.lock` beside it, removed on release)."""
    return unit_lock(out_dir.parent / f".{out_dir.name}.lock")


def clean_run_folder(out_dir: Path) -> list[Path]:
    """Remove what killed runs left in a run folder (temporary and replaced folders and files); return them.

    Call it under `out_folder_lock`: no other run writes there then.
    """
    leftovers = []
    for pattern in (f".{RUN_RECORDS_DIR}.*", f".{RUN_UNSAFE_DIR}.*", ".*.json.*.tmp"):
        leftovers.extend(out_dir.glob(pattern) if out_dir.is_dir() else [])
    for path in sorted(set(leftovers)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return sorted(set(leftovers))


class ShardedWriter:
    """Appends records to `part-NNNNN.jsonl` files of `per_file` records each, in order."""

    def __init__(self, folder: Path, *, per_file: int) -> None:
        """Write into `folder` (a temporary folder that replaces the real one at the end of the run)."""
        self.folder, self.per_file = folder, per_file
        self.count = 0
        self._file: Any = None

    def write(self, record: str) -> None:
        """Append one record (its JSON line), starting a new part file every `per_file` records."""
        if self.count % self.per_file == 0:
            self._open(self.count // self.per_file)
        self._file.write(record + "\n")
        self.count += 1

    def close(self) -> None:
        """Close the last part (an empty run still gets one empty part, as readers expect)."""
        if self.count == 0:
            self._open(0)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self, k: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.folder / f"part-{k:05d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115


def _ref(model: Any) -> StageModel:
    return StageModel(backend=model.backend, model=model.model, revision=model_revision(model))


class RunTotals:
    """Counts and tokens of `run.json`, summed window by window."""

    def __init__(self, config: PipelineConfig) -> None:
        """Zero counters for the stages of `config`."""
        self.config = config
        self.llm_stages = config.model_stages()
        self.tokens: dict[str, Usage] = {s: Usage() for s in self.llm_stages}
        self.counts = dict.fromkeys(RunCounts.model_fields, 0)

    def add(self, row: RowSummary) -> None:
        """Add one finished row."""
        for stage, usage in row.tokens.items():
            self.tokens[stage] = self.tokens[stage] + usage
        for key, n in row.counts.items():
            self.counts[key] += n

    def info(self, *, fingerprint: str, input_digest: str, stage_fps: dict[str, str]) -> RunInfo:
        """The `run.json` of the whole run."""
        config = self.config
        return RunInfo(
            pipeline=config.name,
            fingerprint=fingerprint,
            input_digest=input_digest,
            stage_fingerprints=stage_fps,
            models={s: _ref(config.model_for(s)) for s in self.llm_stages},
            generator=_ref(config.model_for("generate")),
            judge=_ref(config.model_for("judge")) if config.judge else None,
            sampling={s: getattr(config, s).sampling for s in self.llm_stages},
            counts=RunCounts(**self.counts),
            tokens=self.tokens,
        )
