"""Row selection for the exports: which response is best, which pair is a preference, which split.

Pure per-record functions, tested directly; the verbs in `lmsynth.export.sft_dpo` stream records through them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Literal

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.records import Message
from lmsynth.recover import RecoveredRecord


SFTField = Literal["best", "multiturn"]

# Filter counters, in the order the card lists them.
KEPT = "kept"
DROP_DUPLICATE = "dropped_duplicate"
DROP_EMPTY = "dropped_empty_instruction"
DROP_PII = "dropped_pii"
DROP_TEMPLATE = "dropped_template"
DROP_NO_SCORE = "dropped_no_scored_response"
DROP_MIN_SCORE = "dropped_below_min_score"
DROP_NO_EN = "dropped_no_english"
DROP_TIE = "dropped_tie"
DROP_MARGIN = "dropped_below_min_margin"


class SFTRow(StrictModel):
    """One SFT example in TRL's conversational language-modelling shape."""

    messages: list[Message] = Field(min_length=2)


class DPORow(StrictModel):
    """One preference pair in TRL's conversational preference shape (explicit prompt)."""

    prompt: list[Message] = Field(min_length=1)
    chosen: list[Message] = Field(min_length=1, max_length=1)
    rejected: list[Message] = Field(min_length=1, max_length=1)
    score_chosen: float
    score_rejected: float


class ExportFilters(StrictModel):
    """The options both exports share; the card restates them."""

    exclude_pii: bool = False
    exclude_templates: bool = False
    min_score: float | None = Field(None, ge=0, le=10)
    drop_repetitions: bool = False
    test_size: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    subsets: list[str] | None = None


def best_index(rec: RecoveredRecord, *, drop_repetitions: bool, include_failed: bool = False) -> int | None:
    """Index of the highest-scoring usable JA response (ties → lowest index), or None if none is usable.

    With `include_failed`, a response whose rating failed ranks below every scored one instead of never.
    """
    usable = _usable(rec, drop_repetitions=drop_repetitions)
    if usable:
        return min(usable, key=lambda i: (-usable[i], i))
    if include_failed:
        return next(iter(_usable(rec, drop_repetitions=drop_repetitions, failed=True)), None)
    return None


def worst_index(rec: RecoveredRecord, *, drop_repetitions: bool) -> int | None:
    """Index of the lowest-scoring usable JA response (ties → lowest index), or None if none is usable."""
    usable = _usable(rec, drop_repetitions=drop_repetitions)
    return min(usable, key=lambda i: (usable[i], i)) if usable else None


def sft_row(
    rec: RecoveredRecord,
    *,
    lang: Literal["ja", "en"],
    field: SFTField,
    filters: ExportFilters,
    counts: Counter[str],
    include_failed: bool = False,
) -> SFTRow | None:
    """The SFT row of one record in one language, or None (counting why)."""
    if lang == "en":
        # The first user turn: a recovered original-release record holds the source's whole conversation.
        instruction = next((m.content for m in rec.conversation if m.role == "user"), "")
        if not instruction.strip() or not rec.synthesized_assistant_responses_en:
            counts[DROP_NO_EN] += 1
            return None
        counts[KEPT] += 1
        return SFTRow(messages=[Message(role="user", content=instruction), rec.synthesized_assistant_responses_en[0]])
    best = best_index(rec, drop_repetitions=filters.drop_repetitions, include_failed=include_failed)
    if best is None:
        counts[DROP_NO_SCORE] += 1
        return None
    score = rec.synthesized_response_scoring_annotations[best].preference_score
    if filters.min_score is not None and (score is None or score < filters.min_score):
        counts[DROP_MIN_SCORE] += 1
        return None
    counts[KEPT] += 1
    if field == "multiturn" and rec.synthesized_multiturn_conversation:
        conv = rec.synthesized_multiturn_conversation[0]
        if conv and conv[0].content.strip():
            return SFTRow(messages=conv)
    user = Message(role="user", content=rec.translated_conversation[0].content)
    return SFTRow(messages=[user, rec.synthesized_assistant_responses[best]])


def dpo_row(rec: RecoveredRecord, *, min_margin: float, filters: ExportFilters, counts: Counter[str]) -> DPORow | None:
    """The preference pair of one record, or None (counting why)."""
    usable = _usable(rec, drop_repetitions=filters.drop_repetitions)
    if len(usable) < 2:
        counts[DROP_NO_SCORE] += 1
        return None
    best = best_index(rec, drop_repetitions=filters.drop_repetitions)
    worst = worst_index(rec, drop_repetitions=filters.drop_repetitions)
    assert best is not None and worst is not None
    hi, lo = usable[best], usable[worst]
    if hi == lo:
        counts[DROP_TIE] += 1
        return None
    if hi - lo < min_margin:
        counts[DROP_MARGIN] += 1
        return None
    if filters.min_score is not None and hi < filters.min_score:
        counts[DROP_MIN_SCORE] += 1
        return None
    counts[KEPT] += 1
    responses = rec.synthesized_assistant_responses
    return DPORow(
        prompt=[Message(role="user", content=rec.translated_conversation[0].content)],
        chosen=[responses[best]],
        rejected=[responses[worst]],
        score_chosen=hi,
        score_rejected=lo,
    )


def split_of(conversation_id: str, *, test_size: float, seed: int) -> str:
    """`train` or `test`, from a stable hash of the id and seed (same answer on every machine and run)."""
    if test_size <= 0:
        return "train"
    digest = hashlib.sha256(f"{seed}\x1f{conversation_id}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_size else "train"


# Private helpers


def _usable(rec: RecoveredRecord, *, drop_repetitions: bool, failed: bool = False) -> dict[int, float]:
    """`{index: score}` of the JA responses that may be chosen: scored (never a failure), optionally non-repeating.

    `failed=True` gives the failed ones instead (score 0.0 as a placeholder, never compared with a real one).
    """
    usable: dict[int, float] = {}
    n = len(rec.synthesized_assistant_responses)
    for i, ann in enumerate(rec.synthesized_response_scoring_annotations[:n]):
        if (ann.preference_score is None) != failed or (drop_repetitions and ann.repetition_flag):
            continue
        usable[i] = ann.preference_score or 0.0
    return usable
