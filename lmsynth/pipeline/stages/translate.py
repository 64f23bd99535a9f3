"""Stage 1: translate English instructions into Japanese; Japanese instructions pass through unchanged.

Small and large models alike wrap translations in chatter ("Here is the translation:", quotes, code fences);
`clean_translation` removes it so the empty and duplicate flags see the translation itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.llm import ChatModel
from lmsynth.pipeline.pipeline_row import PipelineRow, TranslateOutput, Usage
from lmsynth.pipeline.stages.prompts import PromptPath, default_prompt, read_prompt, render
from lmsynth.sampling import SamplingConfig


class TranslateConfig(StrictModel):
    """How instructions are translated."""

    model: str = Field(min_length=1, description="A key of the pipeline's `models`.")
    prompt: PromptPath = Field(default_factory=lambda: default_prompt("translate_en_ja.txt"))
    sampling: SamplingConfig = SamplingConfig(max_tokens=1024, temperature=0.0)
    source_languages: list[str] = Field(
        default_factory=lambda: ["Japanese"], description="Languages used as they are (no translation)."
    )


def needs_translation(row: PipelineRow, config: TranslateConfig) -> bool:
    """Only instructions not already in Japanese are sent to the model."""
    return row.record.language not in config.source_languages


def build_translate_messages(instruction: str, *, template: str) -> list[dict[str, str]]:
    """The chat sent to the model for one instruction."""
    return [{"role": "user", "content": render(template, instruction=instruction)}]


def clean_translation(text: str) -> str:
    """Strip model chatter around a translation: lead-in lines, code fences, wrapping quotes."""
    text = text.strip()
    fence = _FENCE.fullmatch(text)
    if fence:
        text = fence.group(1).strip()
    lines = text.splitlines()
    while lines and _LEAD_IN.match(lines[0].strip()):
        rest = _LEAD_IN.sub("", lines[0].strip(), count=1).strip()
        lines = ([rest] if rest else []) + lines[1:]
    text = "\n".join(lines).strip()
    fence = _FENCE.fullmatch(text)
    if fence:
        text = fence.group(1).strip()
    for left, right in _QUOTES:
        wrapped = len(text) >= 2 and text.startswith(left) and text.endswith(right)
        # Only a single wrapping pair: 「A」と「B」 is content, not a quoted translation.
        if wrapped and text.count(left) + (0 if left == right else text.count(right)) == 2:
            text = text[len(left) : -len(right)].strip()
    return text


def translate(rows: Sequence[PipelineRow], *, model: ChatModel, config: TranslateConfig) -> list[TranslateOutput]:
    """Translate a batch: one model call for every row that needs it, pass-through for the rest."""
    template = read_prompt(config.prompt)
    todo = [i for i, r in enumerate(rows) if needs_translation(r, config) and r.record.instruction.strip()]
    replies = model.chat(
        [build_translate_messages(rows[i].record.instruction, template=template) for i in todo],
        sampling=config.sampling.model_copy(update={"n": 1}),
    )
    outputs = [
        TranslateOutput(instruction_ja=r.record.instruction.strip(), translated=needs_translation(r, config))
        for r in rows
    ]
    for i, completions in zip(todo, replies, strict=True):
        text = clean_translation(completions[0].text)
        outputs[i] = TranslateOutput(instruction_ja=text, translated=True, usage=Usage.of(completions))
    return outputs


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)\n?```", re.DOTALL)
_LEAD_IN = re.compile(
    r"^(?:(?:sure|okay|ok|certainly)[,!.]?\s*)?"
    r"(?:here(?:'s| is) (?:the |a |my )?(?:japanese )?translation(?: in japanese| into japanese)?"
    r"|(?:japanese )?translation(?: \(japanese\))?"
    r"|以下(?:は|が)?(?:翻訳|日本語訳)(?:です|になります)?"
    r"|(?:日本語)?翻訳(?:文)?"
    r"|日本語訳)"
    r"\s*[:：。.]?",
    re.IGNORECASE,
)
_QUOTES = (('"', '"'), ("「", "」"), ("『", "』"), ("“", "”"), ("'", "'"))
