"""Stage 6 (v0.3 shape): extend the best response into a two-turn conversation.

The generator reads the instruction and its best response, writes the user's next turn, then answers it.
A row without a best response gets no conversation; an empty second user turn leaves it single-turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.llm import ChatModel, SamplingConfig
from lmsynth.pipeline.prompts import PromptPath, default_prompt, read_prompt, render
from lmsynth.pipeline.rows import PipelineRow, SecondTurnOutput, Usage
from lmsynth.pipeline.translate import clean_translation
from lmsynth.records import Message


class SecondTurnConfig(StrictModel):
    """How the second turn is written."""

    model: str = Field(min_length=1, description="A key of the pipeline's `models`.")
    prompt: PromptPath = Field(default_factory=lambda: default_prompt("second_turn_user.txt"))
    user_sampling: SamplingConfig = SamplingConfig(n=1, temperature=0.6, max_tokens=512)
    sampling: SamplingConfig = SamplingConfig(n=1, temperature=0.6, max_tokens=4096)


def best_pair(row: PipelineRow) -> tuple[str, str] | None:
    """(instruction, best response) for a row that has a best response."""
    if not (row.select and row.select.best is not None and row.generate):
        return None
    return row.instruction_ja, row.generate.responses_ja[row.select.best]


def second_turn(rows: Sequence[PipelineRow], *, model: ChatModel, config: SecondTurnConfig) -> list[SecondTurnOutput]:
    """Write second user turns for the batch in one call, then answer them in a second call."""
    template = read_prompt(config.prompt)
    todo = [(i, p) for i, r in enumerate(rows) if (p := best_pair(r)) is not None]
    asks = model.chat(
        [[{"role": "user", "content": render(template, instruction=q, response=a)}] for _, (q, a) in todo],
        sampling=config.user_sampling.model_copy(update={"n": 1}),
    )
    outputs = [SecondTurnOutput() for _ in rows]
    follow_ups = []
    for (i, (q, a)), completions in zip(todo, asks, strict=True):
        c = completions[0]
        user2 = clean_translation(c.text)
        first = [Message(role="user", content=q), Message(role="assistant", content=a)]
        outputs[i] = SecondTurnOutput(conversation=first, usage=_usage(c))
        if user2:
            follow_ups.append((i, [*first, Message(role="user", content=user2)]))
    answers = model.chat(
        [[m.model_dump() for m in conv] for _, conv in follow_ups],
        sampling=config.sampling.model_copy(update={"n": 1}),
    )
    for (i, conv), completions in zip(follow_ups, answers, strict=True):
        c = completions[0]
        o = outputs[i]
        outputs[i] = SecondTurnOutput(
            conversation=[*conv, Message(role="assistant", content=c.text.strip())], usage=o.usage + _usage(c)
        )
    return outputs


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _usage(c) -> Usage:
    return Usage(requests=1, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens)
