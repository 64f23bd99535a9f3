"""The stage table: for each LLM stage, its config model, the row view its cache keys on, and its function.

The view is exactly what the stage reads from a row, so a change anywhere else in the row (or upstream, when
it does not alter what this stage reads) keeps its cached units valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, TypeAdapter

from lmsynth.llm import ChatModel
from lmsynth.pipeline.cache import StageCache
from lmsynth.pipeline.generate import GenerateConfig, generate, wants_english
from lmsynth.pipeline.judge import JudgeConfig, judge
from lmsynth.pipeline.rows import PipelineRow
from lmsynth.pipeline.second_turn import SecondTurnConfig, best_pair, second_turn
from lmsynth.pipeline.translate import TranslateConfig, needs_translation, translate


def parse_config(stage: str, text: str) -> Any:
    """Parse a stage block from its JSON."""
    return _CONFIGS[stage].validate_json(text)


def view(stage: str, row: PipelineRow, config: Any) -> dict[str, Any]:
    """What `stage` reads from `row` (the cache unit key is the digest of these, in order)."""
    return _VIEWS[stage](row, config)


def run_stage(stage: str, rows: Sequence[PipelineRow], *, model: ChatModel, config: Any) -> Sequence[BaseModel]:
    """Run one LLM stage on a batch."""
    return _FUNCTIONS[stage](rows, model=model, config=config)


class UnitResult(NamedTuple):
    """A unit's stage outputs (JSON, one per row) and whether the cache served them."""

    outputs: list[str]
    cached: bool


def run_unit(
    stage: str, rows: Sequence[PipelineRow], *, model: ChatModel, config: Any, cache: StageCache
) -> UnitResult:
    """One cache unit: the stage outputs (JSON) for `rows`, from the cache or computed and then cached.

    A unit missing from the cache is computed under its lock, so a concurrent run that reaches the same unit
    waits for it and then reads it instead of computing it again.
    """
    key = cache.key([view(stage, r, config) for r in rows])
    outputs = cache.get(key, n_rows=len(rows))
    if outputs is not None:
        return UnitResult(outputs, cached=True)
    with cache.lock(key):
        outputs = cache.get(key, n_rows=len(rows))
        if outputs is not None:
            return UnitResult(outputs, cached=True)
        outputs = [r.model_dump_json() for r in run_stage(stage, rows, model=model, config=config)]
        cache.put(key, outputs)
    return UnitResult(outputs, cached=False)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------

_CONFIGS: dict[str, TypeAdapter] = {
    "translate": TypeAdapter(TranslateConfig),
    "generate": TypeAdapter(GenerateConfig),
    "judge": TypeAdapter(JudgeConfig),
    "second_turn": TypeAdapter(SecondTurnConfig),
}

_VIEWS: dict[str, Callable[[PipelineRow, Any], dict[str, Any]]] = {
    "translate": lambda r, c: {
        "instruction": r.record.instruction if needs_translation(r, c) else None,
        "passthrough": None if needs_translation(r, c) else r.record.instruction,
    },
    "generate": lambda r, c: {
        "ja": None if r.skipped else r.instruction_ja,
        "en": r.record.instruction if wants_english(r, c) else None,
    },
    "judge": lambda r, c: {
        "id": r.record.conversation_id,
        "instruction_ja": r.instruction_ja,
        "responses": r.generate.responses_ja if r.generate else [],
    },
    "second_turn": lambda r, c: {"pair": best_pair(r)},
}

_FUNCTIONS: dict[str, Callable[..., Sequence[BaseModel]]] = {
    "translate": translate,
    "generate": generate,
    "judge": judge,
    "second_turn": second_turn,
}
