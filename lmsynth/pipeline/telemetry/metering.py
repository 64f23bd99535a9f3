"""Metering: a `ChatModel` wrapper that counts what one batch asked of the model."""

from __future__ import annotations

import time
from typing import Any

from lmsynth.pipeline.telemetry.events import BatchEvent


class MeteredChatModel:
    """A `ChatModel` wrapper that counts what one batch asked of the model, for a `BatchEvent`."""

    def __init__(self, model: Any) -> None:
        """Wrap `model` (anything with the `ChatModel` protocol)."""
        self.model = model
        self.model_id = model.model_id
        self.revision = model.revision
        self.requests = self.generations = self.input_tokens = self.output_tokens = 0
        self.seconds = 0.0
        self.started_at: float | None = None
        self.ended_at: float | None = None

    def load(self) -> None:
        """Start the wrapped model."""
        self.model.load()

    def close(self) -> None:
        """Release the wrapped model."""
        self.model.close()

    def chat(self, conversations: Any, **kwargs: Any) -> list[list[Any]]:
        """Call the wrapped model and add its usage and time to the counters (its start-up is not timed)."""
        getattr(self.model, "start", self.model.load)()
        began, t0 = time.time(), time.perf_counter()
        out = self.model.chat(conversations, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.started_at = self.started_at if self.started_at is not None else began
        self.ended_at = time.time()
        self.requests += len(conversations)
        for completions in out:
            self.generations += len(completions)
            self.input_tokens += completions[0].prompt_tokens if completions else 0
            self.output_tokens += sum(c.completion_tokens for c in completions)
        return out

    def event(self, step: str, *, rows: int, cached: bool = False, units_invalid: int = 0) -> BatchEvent:
        """The counters as one event of `step`."""
        return BatchEvent(
            step=step,
            rows=rows,
            requests=self.requests,
            generations=self.generations,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            seconds=round(self.seconds, 6),
            started_at=self.started_at,
            ended_at=self.ended_at,
            cached=cached,
            units_invalid=units_invalid,
        )
