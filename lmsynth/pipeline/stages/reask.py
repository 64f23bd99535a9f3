"""Ask again, only for the answers that could not be read.

A judge or second-turn answer that breaks the requested format (a refusal, plain prose, a reply cut off at
`max_tokens`) is asked again with the same prompt, up to `max_reasks` times, as UltraFeedback's annotation
did (it re-asked up to 10 times). Re-asks sample at `reask_temperature` or above, each with its own seed:
a greedy engine would only repeat the answer it could not read. The best attempt is kept (fewest unreadable
parts, the earliest on ties); what is still unreadable then is a recorded failure with its raw text, never a
stopped run. Every attempt's tokens are counted, and `Usage.reasks` / `Usage.failures` carry the counts to
`run.json` and `run_report.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.llm import ChatMessages, ChatModel, Completion
from lmsynth.pipeline.pipeline_row import Usage
from lmsynth.sampling import SamplingConfig


T = TypeVar("T")
DEFAULT_MAX_REASKS = 10


class ReaskSettings(StrictModel):
    """How often an unreadable answer is asked again (a stage config mixin; both fields are in its fingerprint)."""

    max_reasks: int = Field(
        DEFAULT_MAX_REASKS, ge=0, le=100, description="Re-asks of an unreadable answer before it is a failure."
    )
    reask_temperature: float = Field(
        0.7, ge=0.0, le=2.0, description="Lowest sampling temperature of a re-ask (greedy answers repeat)."
    )


@dataclass(frozen=True)
class Answer(Generic[T]):
    """The kept attempt of one prompt: its raw text, what `parse` made of it, and what every attempt cost."""

    text: str
    value: T
    unread: int
    usage: Usage

    @property
    def failed(self) -> bool:
        """Some part of the kept answer is still unreadable after every re-ask."""
        return self.unread > 0


def ask(
    model: ChatModel,
    prompts: Sequence[ChatMessages],
    *,
    sampling: SamplingConfig,
    parse: Callable[[int, str], tuple[T, int]],
    settings: ReaskSettings,
    json_schema: dict | None = None,
) -> list[Answer[T]]:
    """One answer per prompt; the unreadable ones (`parse` reports unread parts > 0) are asked again, batched.

    Args:
        model: The chat model.
        prompts: One chat per answer wanted.
        sampling: The stage's sampling (`n` is forced to 1).
        parse: (prompt index, text) → (value, number of unreadable parts); must not raise.
        settings: Re-ask count and temperature.
        json_schema: Structured output schema passed to every attempt.

    Returns:
        One `Answer` per prompt, in order.
    """
    kept: list[Answer[T] | None] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    for attempt in range(settings.max_reasks + 1):
        if not pending:
            break
        replies = model.chat(
            [prompts[i] for i in pending], sampling=_sampling(sampling, attempt, settings), json_schema=json_schema
        )
        still = []
        for i, completions in zip(pending, replies, strict=True):
            c = completions[0] if completions else Completion(text="", prompt_tokens=0, completion_tokens=0)
            text = c.text or ""
            value, unread = parse(i, text)
            cost = Usage.of([c], reasks=int(attempt > 0))
            prev = kept[i]
            if prev is None or unread < prev.unread:
                kept[i] = Answer(text=text, value=value, unread=unread, usage=cost + (prev.usage if prev else Usage()))
            else:
                kept[i] = replace(prev, usage=prev.usage + cost)
            if unread > 0:
                still.append(i)
        pending = still
    for i in pending:
        a = kept[i]
        kept[i] = replace(a, usage=a.usage + Usage(failures=1))
    return kept  # type: ignore[return-value]  # every slot is filled by the first attempt


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _sampling(sampling: SamplingConfig, attempt: int, settings: ReaskSettings) -> SamplingConfig:
    """The first ask uses the stage's sampling; re-ask k samples warmer, with seed `base + k` (reproducible)."""
    if attempt == 0:
        return sampling.model_copy(update={"n": 1})
    return sampling.model_copy(
        update={
            "n": 1,
            "temperature": max(sampling.temperature, settings.reask_temperature),
            "seed": (sampling.seed or 0) + attempt,
        }
    )
