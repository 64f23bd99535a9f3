"""`lmsynth run`: resolve the run plan, stream the input through it window by window, write the run folder.

Output folder contract (`lmsynth.records`): `records/` (one SynthRecord per safe instruction, empty and
duplicate ones included without responses), `unsafe/` (translation fields of the flagged instructions) and
`run.json` (`RunInfo`), written last. Finished work lives in the stage cache (`lmsynth.pipeline.cache`), so
the same command after a crash or kill resumes instead of starting over.

The input streams through in windows of `config.window` rows, one distilabel pipeline per window
(`executor.window.execute`, the only way into distilabel); `run_pipeline` holds the whole multi-window
run, so anything that must outlive a window (an engine served per model) wraps its window loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from lmsynth import constants
from lmsynth.config import StrictModel
from lmsynth.errors import InputRecordError, PipelineError
from lmsynth.faults import kill_point
from lmsynth.fingerprint import digest_rows
from lmsynth.io import atomic_dir, read_jsonl
from lmsynth.outdir import MARKER_FILE, check_out, mark
from lmsynth.pipeline.cache import StageCache
from lmsynth.pipeline.config import (
    PipelineConfig,
    load_pipeline_config,
    model_revision,
    run_fingerprint,
)
from lmsynth.pipeline.engines.ray_actors import RayEngineServer
from lmsynth.pipeline.engines.servers import ENGINE_LOG_DIR, EngineServer, serve_models
from lmsynth.pipeline.executor import patches
from lmsynth.pipeline.executor.on_ray import RayOptions, ray_cluster
from lmsynth.pipeline.executor.window import FinishedRow, WindowFolders, execute, framework_environ
from lmsynth.pipeline.output.parts import PartWriter
from lmsynth.pipeline.output.sink import RowSummary
from lmsynth.pipeline.pipeline_row import PipelineRow
from lmsynth.pipeline.plan import RunPlan, resolve
from lmsynth.pipeline.stages.flags import FirstSeen
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
        ray: run the steps on this Ray cluster (`lmsynth.pipeline.executor.on_ray`) instead of local processes, and
            serve each vLLM model from a Ray actor holding its GPUs (`lmsynth.pipeline.engines.ray_actors`).

    Returns:
        Counts, fingerprint, `RunInfo` and cache statistics.

    Raises:
        ConfigError: the YAML is invalid.
        InputRecordError: an input line is invalid.
        PipelineError: the input folder is missing or unfinished, or a stage failed for some rows.
    """
    cache_root = Path(cache_dir or constants.CACHE_DIR)
    shown = Path(out_dir)
    out_dir = check_out(out_dir, kind="run", inputs=[pipeline_path, input_dir, cache_root])
    config = config or load_pipeline_config(pipeline_path)
    input_dir = Path(input_dir)
    plan = resolve(config, cache_root=cache_root, ray=ray)
    stage_fps, llm_stages = plan.fingerprints, plan.llm_stages
    scan = scan_input(input_dir, limit=config.limit, row_filter=row_filter)
    fp = run_fingerprint(config, input_digest=scan.digest, stage_fingerprints=stage_fps)
    telemetry = Telemetry(total_requests=scan.rows * len(llm_stages), gpus=_gpus(plan))
    totals = RunTotals(plan)
    framework_environ(config)  # before Ray's cluster starts: its workers inherit the environment then
    # One run per output folder at a time (a second one waits, then reuses the cache); leftovers of killed
    # runs in it are removed first.
    with _removed_unless_written(out_dir), out_folder_lock(out_dir), run_work_dir(cache_root) as work:
        check_out(out_dir, kind="run", inputs=[pipeline_path, input_dir, cache_root])  # as another run left it
        mark(out_dir, "run")  # first: a killed run's folder is still a run folder the rerun may resume
        clean_run_folder(out_dir)
        for stage in llm_stages:
            StageCache(cache_root, stage=stage, fingerprint=stage_fps[stage]).sweep()
        kill_point("run.caching", cache_root)
        with (
            # Translated instructions (gated text): private, like the cache units they come from.
            atomic_dir(out_dir / RUN_RECORDS_DIR, private=True) as records_tmp,
            atomic_dir(out_dir / RUN_UNSAFE_DIR, private=True) as unsafe_tmp,
        ):
            safe_out = PartWriter(records_tmp, per_file=config.shard_records)
            unsafe_out = PartWriter(unsafe_tmp, per_file=config.shard_records)
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
                # Once the engines are starting (importing distilabel takes seconds, as does a start), and
                # before any distilabel pipeline: a changed framework is one line, not a hang.
                patches.apply()
                rows = iter_rows(input_dir, limit=config.limit, row_filter=row_filter)
                for finished in _stream(plan.serving(models), rows, work=work, total=scan.rows):
                    kill_point("run.writing", out_dir)
                    for row in finished:
                        totals.add(row.summary)
                        (unsafe_out if row.summary.unsafe else safe_out).write(row.record)
            safe_out.close()
            unsafe_out.close()
            # run.json goes before the new folders replace the old ones and comes back last: its presence
            # marks a complete folder.
            (out_dir / RUN_INFO_FILE).unlink(missing_ok=True)
        info = totals.info(fingerprint=fp, input_digest=scan.digest)
        write_run_info(out_dir, info)
        write_report(out_dir, report_from_run(out_dir, telemetry=telemetry))
    units = telemetry.units()
    return RunResult(
        out_dir=shown,
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


def _stream(plan: RunPlan, rows: Iterable[PipelineRow], *, work: Path, total: int) -> Iterator[list[FinishedRow]]:
    """Run the pipeline window by window (`total` rows in all); yield each window's finished rows, in input order."""
    seen = FirstSeen()
    only = total <= window_size(plan.config)
    for window in windows(rows, plan.config):
        seen_path = None
        if seen.first:
            seen_path = work / "flags-first-seen.json"
            seen.write(seen_path)
        folders = WindowFolders(work / "distilabel", work / "telemetry", seen_path, work / "units")
        finished = execute(plan, window, folders, only_window=only)
        for row, done in zip(window, finished, strict=True):
            if done.summary.first_key is not None:
                seen.add(done.summary.first_key, row.record.conversation_id)
        yield finished


def windows(rows: Iterable[PipelineRow], config: PipelineConfig) -> Iterator[list[PipelineRow]]:
    """Consecutive lists of `window_size` rows."""
    size = window_size(config)
    chunk: list[PipelineRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def window_size(config: PipelineConfig) -> int:
    """`config.window` rounded up to whole batches, so that cache units never straddle two windows."""
    return -(-config.window // config.batch_size) * config.batch_size


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _gpus(plan: RunPlan) -> int:
    """GPUs the run holds: visible ones when any stage runs an in-process vLLM engine, else none."""
    if not plan.in_process_engines:
        return 0
    return visible_gpu_count()


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


@contextlib.contextmanager
def _removed_unless_written(out_dir: Path) -> Iterator[None]:
    """A run that fails before writing anything leaves no output folder where there was none (not even its marker)."""
    fresh = not os.path.lexists(out_dir)
    try:
        yield
    except BaseException:
        if fresh and out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {MARKER_FILE}:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


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


def _ref(model: Any) -> StageModel:
    return StageModel(backend=model.backend, model=model.model, revision=model_revision(model))


class RunTotals:
    """Counts and tokens of `run.json`, summed window by window."""

    def __init__(self, plan: RunPlan) -> None:
        """Zero counters for the stages of `plan`."""
        self.plan, self.config = plan, plan.config
        self.llm_stages = plan.llm_stages
        self.tokens: dict[str, Usage] = {s: Usage() for s in self.llm_stages}
        self.counts = dict.fromkeys(RunCounts.model_fields, 0)

    def add(self, row: RowSummary) -> None:
        """Add one finished row."""
        for stage, usage in row.tokens.items():
            self.tokens[stage] = self.tokens[stage] + usage
        for key, n in row.counts.items():
            self.counts[key] += n

    def info(self, *, fingerprint: str, input_digest: str) -> RunInfo:
        """The `run.json` of the whole run."""
        config, plan = self.config, self.plan
        return RunInfo(
            pipeline=config.name,
            fingerprint=fingerprint,
            input_digest=input_digest,
            stage_fingerprints=plan.fingerprints,
            models={s: _ref(plan.stage(s).model) for s in self.llm_stages},
            generator=_ref(config.model_for("generate")),
            judge=_ref(config.model_for("judge")) if config.judge else None,
            sampling={s: plan.stage(s).block.sampling for s in self.llm_stages},
            counts=RunCounts(**self.counts),
            tokens=self.tokens,
            shard_records=config.shard_records,
        )
