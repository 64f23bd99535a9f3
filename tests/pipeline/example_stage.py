"""A worked example of a new stage: this module and its one `register` call, nothing else in lmsynth.

`topic` asks the pipeline's model for a one-word topic of each translated instruction. Its block in a
pipeline YAML is `topic: {model: NAME}`; the run gives it a step, a stage cache keyed on what it reads
(`view`), a fingerprint, its tokens in `run.json` and `run_report.json`, and later stages read its output
as `row.output("topic")`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.llm import ChatModel
from lmsynth.pipeline.pipeline_row import PipelineRow
from lmsynth.pipeline.stages import registry as stages
from lmsynth.records import Usage
from lmsynth.sampling import SamplingConfig


class TopicConfig(StrictModel):
    """The `topic:` block."""

    model: str = Field(min_length=1, description="A key of the pipeline's `models`.")
    sampling: SamplingConfig = SamplingConfig(max_tokens=8, temperature=0.0)


class TopicOutput(StrictModel):
    """One word per row (empty for a row with no instruction)."""

    topic: str = ""
    usage: Usage = Usage()


def topic(rows: Sequence[PipelineRow], *, model: ChatModel, config: TopicConfig) -> list[TopicOutput]:
    """One request per row that has a translated instruction."""
    todo = [i for i, r in enumerate(rows) if r.instruction_ja]
    prompts = [[{"role": "user", "content": f"One word for the topic of: {rows[i].instruction_ja}"}] for i in todo]
    outputs = [TopicOutput() for _ in rows]
    for i, completions in zip(todo, model.chat(prompts, sampling=config.sampling), strict=True):
        outputs[i] = TopicOutput(topic=completions[0].text.strip(), usage=Usage.of(completions))
    return outputs


TOPIC = stages.register(
    stages.Stage(
        "topic",
        TopicConfig,
        topic,
        calls_model=True,
        view=lambda r, c: {"ja": r.instruction_ja},
        output=TopicOutput,
    )
)
