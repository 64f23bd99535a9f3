"""The original release's records, read tolerantly: documented fields checked, unknown fields kept.

Only the field descriptions of the release's pages are known (SPEC §6), so every model keeps fields it does
not know (`extra="allow"`) instead of refusing them, and checks the documented ones strictly (a `"yes"` is no
boolean). A judge failure is `preference_score: -1` there; lmsynth's records write it as null.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from lmsynth.records import Message, ScoringAnnotation
from lmsynth.recover import RecoveredRecord


FAILED_SCORE = -1.0  # the original's mark of a judge whose rating could not be read
SCORE_SCALE = (0.0, 10.0)  # single-answer grading, MT-Bench style

# Record fields the release documents for every conversation; each must be in the public file or the JA file.
FLAG_FIELDS = ("duplicate_user_instruction_ja", "empty_user_instruction_ja", "is_template_instruction")


class OriginalInstruction(BaseModel):
    """One line of the decrypted `…-ja[+unsafe].jsonl.gz`: the gated JA instruction (other fields kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    conversation_id: str = Field(min_length=1)
    translated_conversation: list[Message] = Field(min_length=1)

    @field_validator("translated_conversation")
    @classmethod
    def _user_first(cls, value: list[Message]) -> list[Message]:
        if value[0].role != "user":
            raise ValueError("the first message must be the user's JA instruction")
        return value


class OriginalAnnotation(ScoringAnnotation):
    """The judge's result for one response; `preference_score` -1 (failed) is allowed here and nulled on recovery."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @field_validator("preference_score")
    @classmethod
    def _on_scale(cls, value: float | None) -> float | None:
        low, high = SCORE_SCALE
        if value is not None and value != FAILED_SCORE and not low <= value <= high:
            raise ValueError(f"{value} is neither a score on the 0-10 scale nor -1 (judge failed)")
        return value


class OriginalSynthRecord(BaseModel):
    """One line of a public `<generation>-lmsys-chat-1m-synth-ja+en.jsonl.gz` (no instruction text)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    conversation_id: str = Field(min_length=1)
    duplicate_user_instruction_ja: str | None = None
    empty_user_instruction_ja: bool = False
    is_template_instruction: str | None = None
    synthesized_assistant_responses: list[Message] = Field(default_factory=list)
    synthesized_response_scoring_annotations: list[OriginalAnnotation] = Field(default_factory=list)
    synthesized_assistant_responses_en: list[Message] | None = None
    # Gemma-2: one conversation; lmsynth's records hold a list of them. Both shapes are read.
    synthesized_multiturn_conversation: list[list[Message]] | list[Message] | None = None

    @field_validator("synthesized_response_scoring_annotations")
    @classmethod
    def _parallel(cls, value: list[OriginalAnnotation], info: ValidationInfo) -> list[OriginalAnnotation]:
        n = len(info.data.get("synthesized_assistant_responses", []))
        if len(value) != n:
            raise ValueError(f"{len(value)} annotations for {n} responses (one per response, in order)")
        return value


class OriginalRecoveredRecord(RecoveredRecord):
    """A recovered record of the original release: lmsynth's recovered fields plus every other field read.

    `conversation` is the source's whole conversation (as the authors' merge leaves it), whose first user
    turn is the English instruction; `model`, `turn` and `openai_moderation` come with it.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    synthesized_response_scoring_annotations: list[OriginalAnnotation] = Field(default_factory=list)


def one_conversation_list(value: Any) -> Any:
    """`synthesized_multiturn_conversation` as a list of conversations (a single conversation is wrapped)."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [value]
    return value
