"""All the queues of one distilabel Ray run in one actor.

distilabel's Ray pipeline makes each of its queues (log, output, load, and one input queue per step) a
`ray.util.queue.Queue`, which is an actor of its own: one more worker process importing Ray, about 2 s of CPU,
for each queue of every window. One `QueueHost` holds them all. A `HostedQueue` is what distilabel passes to
its step actors in place of a Ray queue; it has the methods distilabel and `logging`'s queue handler and
listener call, with the same blocking and the same `Empty`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


# A blocking `get` holds one of the actor's concurrent calls while it waits: each step replica, the output and
# load loops and the log listener keep one open for the whole run.
MAX_WAITING_CALLS = 10_000
CHECK_S = 1.0  # a waiting `get` checks this often that Ray is still up (see `HostedQueue.get`)


class QueueGone(RuntimeError):
    """Ray shut down while a `get` waited: no item can come any more."""


class QueueHost:
    """The actor: unbounded FIFO queues by name, made on first use."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[Any]] = {}

    def _queue(self, name: str) -> asyncio.Queue[Any]:
        return self._queues.setdefault(name, asyncio.Queue())

    async def qsize(self, name: str) -> int:
        """Items waiting in `name`."""
        return self._queue(name).qsize()

    async def put(self, name: str, item: Any) -> None:
        """Append `item` (never waits: the queues are unbounded, as distilabel makes them)."""
        self._queue(name).put_nowait(item)

    async def get(self, name: str, timeout: float | None) -> tuple[bool, Any]:
        """`(True, item)`, or `(False, None)` when nothing came within `timeout` (0: do not wait)."""
        q = self._queue(name)
        if timeout == 0:
            return (True, q.get_nowait()) if not q.empty() else (False, None)
        try:
            return True, await asyncio.wait_for(q.get(), timeout)
        except asyncio.TimeoutError:
            return False, None


class HostedQueue:
    """One named queue of a `QueueHost`, used as distilabel uses a `ray.util.queue.Queue`; picklable."""

    def __init__(self, host: Any, name: str) -> None:
        self.host = host
        self.name = name

    def qsize(self) -> int:
        """Items waiting."""
        import ray

        return ray.get(self.host.qsize.remote(self.name))

    size = qsize

    def __len__(self) -> int:
        return self.qsize()

    def empty(self) -> bool:
        """Whether nothing is waiting."""
        return self.qsize() == 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Append `item`; an unbounded queue is never full, so `block` and `timeout` change nothing."""
        import ray

        ray.get(self.host.put.remote(self.name, item))

    def put_nowait(self, item: Any) -> None:
        """As `put` (what `logging.handlers.QueueHandler` calls)."""
        self.put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next item; waits up to `timeout` (None: forever) when `block`.

        Raises:
            ray.util.queue.Empty: nothing came in time; a `queue.Empty`, as a Ray queue raises.
            QueueGone: Ray shut down meanwhile. A signal to the run's whole process group ends the cluster's
                own processes before the run shuts Ray down: the answer never comes, and distilabel's thread
                waiting for it (not a daemon) kept the finished run from exiting.
        """
        import ray
        from ray.exceptions import GetTimeoutError
        from ray.util.queue import Empty

        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        answer = self.host.get.remote(self.name, timeout if block else 0)
        while True:
            try:
                found, item = ray.get(answer, timeout=CHECK_S)
                break
            except GetTimeoutError:
                if not ray.is_initialized():
                    raise QueueGone(f"Ray shut down while waiting on queue {self.name}") from None
        if not found:
            raise Empty
        return item

    def get_nowait(self) -> Any:
        """As `get(block=False)`."""
        return self.get(block=False)

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Nothing: the host, not each queue, is an actor; it goes when its run ends (`queues_in_one_actor`)."""


@contextmanager
def queues_in_one_actor() -> Iterator[Callable[..., HostedQueue]]:
    """Start a `QueueHost` on the connected cluster; yield a factory with `ray.util.queue.Queue`'s signature.

    The host reserves no CPU (it only waits), and is killed when the block ends: an interrupted run's step
    actors may still hold its queues, and nothing of the run should outlive it.
    """
    import ray

    host = ray.remote(QueueHost).options(num_cpus=0, max_concurrency=MAX_WAITING_CALLS).remote()

    def make(maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> HostedQueue:
        if maxsize:
            raise ValueError("hosted queues are unbounded; distilabel makes no other")
        return HostedQueue(host, (actor_options or {}).get("name") or uuid.uuid4().hex)

    try:
        yield make
    finally:
        if ray.is_initialized():
            ray.kill(host)
