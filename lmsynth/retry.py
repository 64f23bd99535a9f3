"""The one retry policy of lmsynth's remote calls: hub requests (`lmsynth.targets`) and model servers (`lmsynth.llm`).

Exponential backoff with jitter (the wait doubles after each failed try, capped, ±20% so that many
requests failing together do not come back together). Which failures are worth another try is the
caller's knowledge (HTTP statuses, network errors), so it is passed in; the last failure is raised as it
is, for the caller to turn into its own one-line error. This module sits below every lmsynth package and
imports none of them but the config base.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import Field

from lmsynth.config import StrictModel


T = TypeVar("T")
Retryable = Callable[[Exception], bool]
# Called before each wait: the failure, the 1-based number of the try that failed, and the wait in seconds.
OnRetry = Callable[[Exception, int, float], None]


class RetryPolicy(StrictModel):
    """How often and how patiently a remote call is retried."""

    attempts: int = Field(5, ge=1, description="Tries in all, the first included.")
    base_delay_s: float = Field(1.0, ge=0, description="Wait before the 2nd try; doubles each time.")
    max_delay_s: float = Field(30.0, ge=0)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (1-based), with ±20% jitter."""
        raw = min(self.base_delay_s * 2 ** (attempt - 1), self.max_delay_s)
        return raw * random.uniform(0.8, 1.2)

    def call(self, fn: Callable[[], T], *, retryable: Retryable, on_retry: OnRetry | None = None) -> T:
        """Call `fn` until it succeeds, a failure is not `retryable`, or the tries run out (the last failure raised).

        `fn` must be safe to repeat.
        """
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as e:
                wait = self._wait_or_raise(e, attempt, retryable, on_retry)
            time.sleep(wait)
        raise AssertionError("unreachable")

    async def call_async(
        self, fn: Callable[[], Awaitable[T]], *, retryable: Retryable, on_retry: OnRetry | None = None
    ) -> T:
        """`call` for a coroutine function: the waits are `asyncio.sleep`, so other requests go on meanwhile."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await fn()
            except Exception as e:
                wait = self._wait_or_raise(e, attempt, retryable, on_retry)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    # Private helpers

    def _wait_or_raise(self, e: Exception, attempt: int, retryable: Retryable, on_retry: OnRetry | None) -> float:
        if attempt == self.attempts or not retryable(e):
            raise e
        wait = self.delay(attempt)
        if on_retry is not None:
            on_retry(e, attempt, wait)
        return wait
