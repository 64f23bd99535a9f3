"""Stage 5: choose the best response for SFT and a chosen/rejected pair for DPO.

Both rules are deterministic: ties go to the lowest index, failed ratings (None) are never chosen and never
paired, and responses flagged as repetitions rank below every clean one when `avoid_repetitions` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.pipeline.pipeline_row import PipelineRow, SelectOutput


class SelectConfig(StrictModel):
    """Selection rules."""

    avoid_repetitions: bool = Field(True, description="Prefer any clean response over a flagged repetition.")
    dpo_margin: float = Field(1.0, ge=0, description="Pair only when best − worst score is at least this.")


def best_of_n(
    scores: Sequence[float | None], *, repetition_flags: Sequence[bool] = (), avoid_repetitions: bool = True
) -> int | None:
    """Index of the best-scoring response (lowest index on ties); None when every rating failed."""
    candidates = [i for i, s in enumerate(scores) if s is not None]
    if not candidates:
        return None
    flags = list(repetition_flags) + [False] * (len(scores) - len(repetition_flags))

    def rank(i: int) -> tuple[bool, float, int]:
        return (not (avoid_repetitions and flags[i]), scores[i], -i)

    return max(candidates, key=rank)


def dpo_pair(scores: Sequence[float | None], *, margin: float) -> tuple[int, int] | None:
    """(chosen, rejected): best vs worst rated response when they differ by at least `margin` (and > 0)."""
    rated = [i for i, s in enumerate(scores) if s is not None]
    if len(rated) < 2:
        return None
    chosen = max(rated, key=lambda i: (scores[i], -i))
    rejected = min(rated, key=lambda i: (scores[i], -i))
    gap = scores[chosen] - scores[rejected]
    if chosen == rejected or gap <= 0 or gap < margin:
        return None
    return chosen, rejected


def select(rows: Sequence[PipelineRow], *, config: SelectConfig) -> list[SelectOutput]:
    """Selection for a batch of judged rows."""
    outputs = []
    for row in rows:
        scores = row.judge.scores if row.judge else []
        flags = row.generate.repetition_flags if row.generate else []
        best = best_of_n(scores, repetition_flags=flags, avoid_repetitions=config.avoid_repetitions)
        pair = dpo_pair(scores, margin=config.dpo_margin)
        outputs.append(
            SelectOutput(best=best, dpo_chosen=pair[0] if pair else None, dpo_rejected=pair[1] if pair else None)
        )
    return outputs
