"""Turn finished pipeline rows into SPEC §3 `SynthRecord`s: only the schema's fields leave the pipeline.

distilabel's metadata, prompts, raw outputs and lmsynth's own bookkeeping (usage, selection indices) stay
behind: a SynthRecord is built field by field, never from the row dict. Generated text that quotes the
gated instruction (JA translation or English original) verbatim gets the quote replaced, so that the public
release never carries it (the release's leak guard would refuse it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from lmsynth.pipeline.pipeline_row import PipelineRow
from lmsynth.records import Message, ScoringAnnotation, SynthRecord, redact_quotes


def to_synth_record(row: PipelineRow, *, english: bool, multiturn: bool) -> SynthRecord:
    """The record of a safe instruction: translation fields, responses, annotations and, by shape, EN/2-turn.

    Args:
        row: a row that went through every stage of its pipeline.
        english: the pipeline asks for English responses (v0.1/v0.3 shape).
        multiturn: the pipeline writes two-turn conversations (v0.3 shape).
    """
    base = to_unsafe_record(row)
    if row.record.flagged:
        return base
    gen, judged = row.generate, row.judge
    gated = [row.instruction_ja, row.record.instruction]

    def public(text: str) -> str:
        return redact_quotes(text, gated)

    responses = [public(t) for t in gen.responses_ja] if gen else []
    annotations = [
        ScoringAnnotation(
            response_token_length=gen.token_lengths[k],
            judgement=public_judgement(judged.judgements[k], public) if judged and k < len(judged.judgements) else "",
            repetition_flag=gen.repetition_flags[k],
            preference_score=judged.scores[k] if judged and k < len(judged.scores) else None,
        )
        for k in range(len(responses))
    ]
    en = [public(t) for t in gen.responses_en] if (english and gen and gen.responses_en is not None) else None
    conversation = row.second_turn.conversation if row.second_turn else None
    if conversation:  # the first user turn IS the instruction (blanked by the release); later turns are generated
        conversation = conversation[:1] + [
            m.model_copy(update={"content": public(m.content)}) for m in conversation[1:]
        ]
    return base.model_copy(
        update={
            "synthesized_assistant_responses": [Message(role="assistant", content=t) for t in responses],
            "synthesized_response_scoring_annotations": annotations,
            "synthesized_assistant_responses_en": (
                [Message(role="assistant", content=t) for t in en] if en is not None else None
            ),
            "synthesized_multiturn_conversation": ([conversation] if conversation else []) if multiturn else None,
        }
    )


def public_judgement(judgement: str, public: Callable[[str], str]) -> str:
    """Redact a judgement; a JSON one (ultrafeedback) string by string, since escaping hides quotes in its text.

    A judge answer kept raw may echo the instruction with newlines or quotes, which JSON escapes: redacting
    the encoded text alone would miss them.
    """
    try:
        data = json.loads(judgement)
    except (ValueError, RecursionError):
        return public(judgement)
    if not isinstance(data, dict):
        return public(judgement)
    return json.dumps(_map_strings(data, public), ensure_ascii=False)


def to_unsafe_record(row: PipelineRow) -> SynthRecord:
    """Translation fields only: flagged instructions are translated for the `+unsafe` set, never answered."""
    flags = row.flags
    return SynthRecord(
        conversation_id=row.record.conversation_id,
        duplicate_user_instruction_ja=flags.duplicate_of if flags else None,
        empty_user_instruction_ja=flags.empty if flags else not row.instruction_ja.strip(),
        translated_conversation=[Message(role="user", content=row.instruction_ja)],
        is_template_instruction=row.record.is_template_instruction,
    )


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value
