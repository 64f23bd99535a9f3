"""Stage 3: n Japanese responses per instruction (and English ones where the pipeline asks for them).

Nothing is generated for flagged, empty or duplicate instructions: their records keep empty response lists.
A response that runs past `repetition_threshold` tokens is flagged as a likely repetition loop (SPEC §3).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.llm import ChatModel
from lmsynth.pipeline.pipeline_row import GenerateOutput, PipelineRow, Usage
from lmsynth.sampling import SamplingConfig


class EnglishResponses(StrictModel):
    """English responses to the original English instruction (v0.1 and v0.3 shapes)."""

    n: int = Field(1, ge=1, le=64)
    languages: list[str] = Field(default_factory=lambda: ["English"], description="Source languages answered.")


class GenerateConfig(StrictModel):
    """How responses are generated."""

    model: str = Field(min_length=1, description="A key of the pipeline's `models`.")
    system_prompt: str | None = None
    sampling: SamplingConfig = SamplingConfig(n=6, temperature=0.6, top_p=1.0, max_tokens=4096)
    repetition_threshold: int = Field(2000, ge=1, description="Responses longer than this many tokens are flagged.")
    english: EnglishResponses | None = None


def build_messages(instruction: str, *, system_prompt: str | None) -> list[dict[str, str]]:
    """The chat for one instruction."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": instruction}]


def wants_english(row: PipelineRow, config: GenerateConfig) -> bool:
    """English responses answer English instructions that are not flagged or empty."""
    en = config.english
    return (
        en is not None
        and row.record.language in en.languages
        and not row.record.flagged
        and bool(row.record.instruction.strip())
    )


def generate(rows: Sequence[PipelineRow], *, model: ChatModel, config: GenerateConfig) -> list[GenerateOutput]:
    """Generate a batch: one model call for all Japanese prompts, one for all English prompts."""
    ja = [i for i, r in enumerate(rows) if not r.skipped]
    en = [i for i, r in enumerate(rows) if wants_english(r, config)]
    ja_out = model.chat(
        [build_messages(rows[i].instruction_ja, system_prompt=config.system_prompt) for i in ja],
        sampling=config.sampling,
    )
    en_out = (
        model.chat(
            [build_messages(rows[i].record.instruction, system_prompt=config.system_prompt) for i in en],
            sampling=config.sampling.model_copy(update={"n": config.english.n}),
        )
        if en
        else []
    )
    outputs = [GenerateOutput() for _ in rows]
    for i, completions in zip(ja, ja_out, strict=True):
        lengths = [c.completion_tokens for c in completions]
        outputs[i] = GenerateOutput(
            responses_ja=[c.text.strip() for c in completions],
            token_lengths=lengths,
            repetition_flags=[n > config.repetition_threshold for n in lengths],
            usage=Usage.of(completions),
        )
    for i, completions in zip(en, en_out, strict=True):
        o = outputs[i]
        outputs[i] = o.model_copy(
            update={"responses_en": [c.text.strip() for c in completions], "usage": o.usage + Usage.of(completions)}
        )
    return outputs
