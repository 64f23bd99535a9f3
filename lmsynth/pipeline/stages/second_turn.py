"""Stage 6 (v0.3 shape): extend the best response into a two-turn conversation.

The generator reads the instruction and its best response, writes the user's next turn, then answers it.
A row without a best response gets no conversation. An unusable answer (a user turn that is empty once
cleaned, an empty assistant answer) is asked again (`max_reasks`, see `lmsynth.pipeline.stages.reask`); one still
unusable after that leaves the row single-turn with the raw text in `SecondTurnOutput.failure`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from lmsynth.llm import ChatModel
from lmsynth.pipeline.pipeline_row import PipelineRow, SecondTurnOutput
from lmsynth.pipeline.stages.prompts import PromptPath, default_prompt, read_prompt, render
from lmsynth.pipeline.stages.reask import ReaskSettings, ask
from lmsynth.pipeline.stages.translate import clean_translation
from lmsynth.records import Message
from lmsynth.sampling import SamplingConfig


class SecondTurnConfig(ReaskSettings):
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


def parse_user_turn(text: str) -> tuple[str, int]:
    """The second user turn without chatter, and 1 when nothing usable is left (never raises)."""
    turn = clean_translation(text if isinstance(text, str) else "")
    return turn, int(not turn)


def parse_answer(text: str) -> tuple[str, int]:
    """The assistant's answer, and 1 when it is empty."""
    answer = text.strip() if isinstance(text, str) else ""
    return answer, int(not answer)


def second_turn(rows: Sequence[PipelineRow], *, model: ChatModel, config: SecondTurnConfig) -> list[SecondTurnOutput]:
    """Write second user turns for the batch in one call, then answer them in a second call."""
    template = read_prompt(config.prompt)
    todo = [(i, p) for i, r in enumerate(rows) if (p := best_pair(r)) is not None]
    asks = ask(
        model,
        [[{"role": "user", "content": render(template, instruction=q, response=a)}] for _, (q, a) in todo],
        sampling=config.user_sampling,
        parse=lambda _, text: parse_user_turn(text),
        settings=config,
    )
    outputs = [SecondTurnOutput() for _ in rows]
    follow_ups = []
    for (i, (q, a)), user2 in zip(todo, asks, strict=True):
        first = [Message(role="user", content=q), Message(role="assistant", content=a)]
        failure = user2.text if user2.failed else None
        outputs[i] = SecondTurnOutput(conversation=first, failure=failure, usage=user2.usage)
        if not user2.failed:
            follow_ups.append((i, [*first, Message(role="user", content=user2.value)]))
    answers = ask(
        model,
        [[m.model_dump() for m in conv] for _, conv in follow_ups],
        sampling=config.sampling,
        parse=lambda _, text: parse_answer(text),
        settings=config,
    )
    for (i, conv), answer in zip(follow_ups, answers, strict=True):
        o = outputs[i]
        if answer.failed:
            outputs[i] = o.model_copy(update={"failure": answer.text, "usage": o.usage + answer.usage})
        else:
            conversation = [*conv, Message(role="assistant", content=answer.value)]
            outputs[i] = SecondTurnOutput(conversation=conversation, usage=o.usage + answer.usage)
    return outputs
