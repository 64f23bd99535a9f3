"""One actor hosts every queue of a Ray run, and behaves as the Ray queues distilabel would otherwise make."""

from __future__ import annotations

import logging
import queue
import threading
import time
from logging.handlers import QueueHandler, QueueListener

import pytest

from lmsynth.pipeline.executor.on_ray import RayOptions
from lmsynth.pipeline.executor.patches import ray_queues_in_one_actor
from lmsynth.pipeline.executor.ray_queues import queues_in_one_actor


pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_queues_are_fifo_apart_and_empty_raises_as_a_ray_queue_does(ray_env: RayOptions) -> None:
    from ray.util.queue import Empty

    with queues_in_one_actor() as make:
        a, b = make(actor_options={"name": "a"}), make(actor_options={"name": "b"})
        for i in range(5):
            a.put({"seq": i})
        b.put_nowait("other")
        assert (a.qsize(), len(b), a.empty(), make().empty()) == (5, 1, False, True)
        assert [a.get()["seq"] for _ in range(5)] == [0, 1, 2, 3, 4]
        assert b.get_nowait() == "other"
        with pytest.raises(Empty):
            a.get_nowait()
        started = time.monotonic()
        with pytest.raises(queue.Empty):
            a.get(timeout=0.3)
        assert time.monotonic() - started >= 0.3
        with pytest.raises(ValueError, match="non-negative"):
            a.get(timeout=-1)
        with pytest.raises(ValueError, match="unbounded"):
            make(maxsize=3)


def test_a_blocked_get_returns_what_a_ray_worker_puts_through_a_pickled_queue(ray_env: RayOptions) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def produce(q, n: int) -> None:
        for i in range(n):
            q.put(i)
        q.put(None)

    with queues_in_one_actor() as make:
        q = make(actor_options={"name": "input"})
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.extend(iter(q.get, None)))  # until the None
        reader.start()  # waits in `get` before anything is put
        time.sleep(0.5)
        ray.get(produce.remote(q, 20))
        reader.join(timeout=60)
        assert not reader.is_alive() and got == list(range(20))


def test_logging_through_a_hosted_queue_reaches_the_listener(ray_env: RayOptions) -> None:
    """distilabel's log queue: steps log through `QueueHandler` (`put_nowait`), the driver's listener reads it."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    with queues_in_one_actor() as make:
        log_queue = make(actor_options={"name": "log"})
        listener = QueueListener(log_queue, Collect())
        listener.start()
        logger = logging.getLogger("lmsynth.test.hosted")
        logger.addHandler(QueueHandler(log_queue))
        try:
            for i in range(3):
                logger.warning("step %d", i)
        finally:
            listener.stop()  # its sentinel goes through `put_nowait` too
        assert records == ["step 0", "step 1", "step 2"]


def test_the_host_goes_with_its_block_and_distilabel_gets_its_queue_class_back(ray_env: RayOptions) -> None:
    import ray
    from distilabel.pipeline.ray import RayPipeline

    original = RayPipeline.__dict__["QueueClass"]
    pipeline = RayPipeline(name="hosted")
    with ray_queues_in_one_actor():
        q = pipeline.QueueClass(actor_options={"name": "distilabel-hosted-output-queue"})
        q.put(1)
        host = q.host
    assert RayPipeline.__dict__["QueueClass"] is original
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(host.qsize.remote("distilabel-hosted-output-queue"), timeout=60)


def test_a_get_that_waits_forever_ends_when_ray_shuts_down(ray_env: RayOptions, monkeypatch) -> None:
    """A SIGTERM to the run's whole group ends the cluster's processes first: the answer to a waiting `get`
    never comes, and distilabel's thread waiting in it (not a daemon) would keep the ended run alive."""
    import ray

    from lmsynth.pipeline.executor.ray_queues import CHECK_S, QueueGone

    with queues_in_one_actor() as make:
        q = make(actor_options={"name": "load"})
        failed: list[BaseException] = []

        def _wait() -> None:
            try:
                q.get()  # nothing ever comes
            except BaseException as e:  # noqa: BLE001 — what ends the wait is the finding
                failed.append(e)

        reader = threading.Thread(target=_wait, daemon=True)
        reader.start()
        time.sleep(2 * CHECK_S)
        assert reader.is_alive()  # still waiting while Ray is up
        monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as after the run's `ray.shutdown()`
        reader.join(timeout=10 * CHECK_S)
        monkeypatch.undo()
        assert not reader.is_alive() and [type(e) for e in failed] == [QueueGone]
