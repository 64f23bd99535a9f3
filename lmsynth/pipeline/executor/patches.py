"""Every change lmsynth makes to a framework's private internals, in this one module, applied explicitly.

distilabel is used through its public API everywhere else. What it does not let a caller choose (its
per-batch bookkeeping for resuming, its polling sleeps, its Ctrl-C handler, the start method of its step
processes, its Ray queues, where `datasets` copies its output, how its process pool waits at teardown) is
changed here, one function per change with its reason.
Nothing is changed at import: `apply()` makes the process-wide changes (the runner and every step process
call it), and the other changes are context managers around one pipeline run.

These were written against distilabel `WRITTEN_FOR`. `check()` (which `apply()` runs first) refuses another
version and any patched attribute that is gone (or, for Python's own pool, takes other arguments), with one
line naming it: an assignment to a renamed attribute would otherwise do nothing, and the run would only get
slower or hang.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lmsynth.errors import PipelineError


WRITTEN_FOR = "1.5.3"
POOL_LOCK_WAIT_S = 2.0  # how long a pool's teardown waits for its task queue's lock (see `_help_stuff_finish`)
_POOL_DRAIN = ("multiprocessing.pool", "Pool._help_stuff_finish")
_POOL_DRAIN_ARGS = ["inqueue", "task_handler", "size"]  # as Python 3.11 has it
logger = logging.getLogger(__name__)

# (module, attribute path): everything below assigns to one of these, and only to these.
TARGETS: tuple[tuple[str, str], ...] = (
    ("distilabel.pipeline.batch", "_Batch._update_data_hash"),
    ("distilabel.pipeline.base", "time"),
    ("distilabel.pipeline.base", "BasePipeline._cache"),
    ("distilabel.pipeline.base", "BasePipeline._register_batch"),
    ("distilabel.pipeline.base", "BasePipeline._handle_keyboard_interrupt"),
    ("distilabel.pipeline.batch_manager", "_BatchManager.register_batch"),
    ("distilabel.pipeline.local", "_NoDaemonContext"),
    ("distilabel.pipeline.local", "_NoDaemonProcess"),
    ("distilabel.pipeline.ray", "RayPipeline.QueueClass"),
    ("datasets.config", "HF_DATASETS_CACHE"),
    _POOL_DRAIN,
)


class FrameworkChangedError(PipelineError):
    """The installed distilabel is not the one lmsynth's patches were written for."""


def check() -> None:
    """Refuse another distilabel version, or a patched attribute that no longer exists.

    Raises:
        FrameworkChangedError: one line naming the version or the attribute.
    """
    import distilabel

    if distilabel.__version__ != WRITTEN_FOR:
        raise FrameworkChangedError(
            f"distilabel {distilabel.__version__} is installed, but {__name__} patches the internals of "
            f"distilabel {WRITTEN_FOR}: install distilabel=={WRITTEN_FOR}"
        )
    for module, path in TARGETS:
        _owner(module, path)
    owner, name = _owner(*_POOL_DRAIN)
    drain = getattr(owner, name)
    if drain is not _help_stuff_finish and list(inspect.signature(drain).parameters) != _POOL_DRAIN_ARGS:
        raise FrameworkChangedError(
            f"`{'.'.join(_POOL_DRAIN)}` no longer takes ({', '.join(_POOL_DRAIN_ARGS)}); {__name__} replaces it "
            "and must be updated"
        )


def apply() -> None:
    """Check, then make the process-wide changes; the runner and every step process call it (idempotent).

    Raises:
        FrameworkChangedError: see `check`.
    """
    check()
    _set("distilabel.pipeline.batch", "_Batch._update_data_hash", _no_data_hash)
    _set("distilabel.pipeline.base", "time", _QUICK_POLLS)
    _set(*_POOL_DRAIN, staticmethod(_help_stuff_finish))


def without_checkpoints(pipeline: Any) -> Any:
    """Turn off distilabel's per-batch bookkeeping for resuming: lmsynth resumes from its own stage cache.

    distilabel 1.5.3 (`pipeline/base.py`), even with `use_cache=False`, after every batch it routes: saves the
    pipeline, its batch manager and every built batch's rows as JSON (`_cache`), and writes the batch's rows
    as JSON once more under `steps_data/<step signature>/` (`_register_batch`), recomputing the pipeline's
    signature each time. Its cost grows with the rows in flight; nothing reads those files when a run starts
    with `use_cache=False`. The batch is still registered with the batch manager, which routes it.
    """
    for name in ("_cache", "_register_batch"):
        _require(pipeline, name, f"{type(pipeline).__name__}.{name}")
    pipeline._cache = lambda: None
    pipeline._register_batch = lambda batch: pipeline._batch_manager.register_batch(batch)
    return pipeline


def replace_keyboard_interrupt_handler(handler: Callable[[Any], Any]) -> Callable[[], None]:
    """Install `handler` as distilabel's Ctrl-C handler (`BasePipeline._handle_keyboard_interrupt`).

    distilabel's own graceful stop waits for batches from steps that have already stopped, forever; the
    runner's handler ends the run instead. Returns the function that puts distilabel's back.
    """
    owner, name = _owner("distilabel.pipeline.base", "BasePipeline._handle_keyboard_interrupt")
    original = getattr(owner, name)
    setattr(owner, name, handler)
    return lambda: setattr(owner, name, original)


@contextlib.contextmanager
def datasets_cache_in(folder: Path) -> Iterator[None]:
    """Keep the copy `datasets` makes of distilabel's output in `folder`, not in its own cache.

    distilabel loads the leaf step's Parquet through `datasets.load_dataset` with no `cache_dir`, which
    copies it into `~/.cache/huggingface/datasets` and never removes it; `HF_DATASETS_CACHE` in the
    environment is read only when `datasets` is imported.
    """
    owner, name = _owner("datasets.config", "HF_DATASETS_CACHE")
    previous = getattr(owner, name)
    setattr(owner, name, folder)
    try:
        yield
    finally:
        setattr(owner, name, previous)


@contextlib.contextmanager
def steps_forked_from_a_small_process(preload: list[str]) -> Iterator[None]:
    """Start distilabel's step processes from a forkserver that has imported `preload`, not from this process.

    distilabel starts one process per step with the default start method; on Linux that forks this process,
    and each child then carries (and `ps` counts) everything this process holds, which grows with every
    window run so far. A forkserver is started once and stays small, so step processes cost the same in the
    last window as in the first, and start in milliseconds with their imports done. distilabel takes its
    queues from the default context (hence the global start method, put back on exit) and its pool from
    its own context class (`local._NoDaemonContext`, whose processes may start processes: vLLM).
    """
    import multiprocessing as mp

    owner, name = _owner("distilabel.pipeline.local", "_NoDaemonContext")
    process = _owner("distilabel.pipeline.local", "_NoDaemonProcess")

    class _Context(mp.context.ForkServerContext):
        Process = getattr(*process)

    previous, original = mp.get_start_method(allow_none=True), getattr(owner, name)
    mp.set_forkserver_preload(preload)
    mp.set_start_method("forkserver", force=True)
    setattr(owner, name, _Context)
    try:
        yield
    finally:
        setattr(owner, name, original)
        mp.set_start_method(previous, force=True)


@contextlib.contextmanager
def ray_queues_in_one_actor() -> Iterator[None]:
    """Make every queue of the Ray pipelines run in the block a queue of one actor (`executor.ray_queues`).

    distilabel's `RayPipeline.QueueClass` is `ray.util.queue.Queue`: an actor, hence a worker process, per
    queue (3 + one per step, every window). Needs a connected Ray.
    """
    from lmsynth.pipeline.executor.ray_queues import queues_in_one_actor

    owner, name = _owner("distilabel.pipeline.ray", "RayPipeline.QueueClass")
    original = getattr(owner, name)
    with queues_in_one_actor() as make:
        setattr(owner, name, property(lambda _pipeline: make))
        try:
            yield
        finally:
            setattr(owner, name, original)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _no_data_hash(self: Any) -> None:
    """No hash: distilabel hashes `str()` of a batch's rows whenever they change, for its cache files only.

    It is computed on both sides of each hand-off, and `str()` of a batch of v0.5 rows (ten responses each)
    is megabytes.
    """
    self.data_hash = None


def _help_stuff_finish(inqueue: Any, task_handler: Any, size: int) -> None:
    """`Pool.terminate`'s drain of its task queue, giving up on the queue's read lock after `POOL_LOCK_WAIT_S`.

    An idle worker holds that lock while it waits for a task. A worker killed while waiting (a SIGTERM to
    the run's whole process group: `timeout`, `kill -- -PGID`, systemd or Slurm stopping a job) holds it
    forever, and the stdlib's drain, hence distilabel's teardown, waited forever: the run hung. The drain
    only frees a task handler blocked on a full queue; distilabel queues one task per step process. The lock
    stays held (as the stdlib leaves it): the pool is going.
    """
    if not inqueue._rlock.acquire(True, POOL_LOCK_WAIT_S):
        logger.debug("a pool worker died holding its task queue's lock; terminating the pool without draining")
        return
    while task_handler.is_alive() and inqueue._reader.poll():
        inqueue._reader.recv()
        time.sleep(0)


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


_QUICK_POLLS = _QuickPolls()


def _owner(module: str, path: str) -> tuple[Any, str]:
    """The object holding the last attribute of `path` in `module`, and that attribute's name; checked."""
    if (module, path) not in TARGETS:
        raise AssertionError(f"{module}.{path} is not in {__name__}.TARGETS")
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for i, part in enumerate(parents):
        owner = _require(owner, part, f"{module}.{'.'.join(parents[: i + 1])}")
    if name not in vars(owner):  # inherited or gone: assigning here would shadow, not replace, what is called
        raise _gone(f"{module}.{path}")
    return owner, name


def _require(owner: Any, name: str, label: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        raise _gone(label) from None


def _gone(label: str) -> FrameworkChangedError:
    return FrameworkChangedError(
        f"`{label}` is gone from the installed framework; {__name__} patches it and must be updated"
    )


def _set(module: str, path: str, value: Any) -> None:
    owner, name = _owner(module, path)
    setattr(owner, name, value)
