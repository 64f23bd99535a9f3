"""The row that moves through a pipeline, and one output model per stage.

Inside distilabel a row is a flat dict: the prepared instruction's fields as plain columns, and each stage's
output as one column of JSON (UTF-8 bytes) named after the stage. Plain JSON keeps distilabel's Parquet
hand-offs and cache files free of schema drift (a nested column that is null in one batch and a list in the
next breaks them); bytes rather than str because every hand-off between step processes pickles each row
four times (step → queue manager → main process → queue manager → step), and a v0.5 row's ten responses
pickle as a copy in bytes but must be encoded and decoded as text. The pydantic models below are the only
place those columns are read or written (`column`, `PipelineRow.from_columns`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.records import InstructionRecord, Message, Usage


class TranslateOutput(StrictModel):
    """The Japanese instruction (the original text for Japanese rows)."""

    instruction_ja: str
    translated: bool = Field(description="False when the source was already Japanese.")
    usage: Usage = Usage()


class FlagsOutput(StrictModel):
    """Flags computed on the translated text over the whole input, in input order."""

    empty: bool
    duplicate_of: str | None = None


class GenerateOutput(StrictModel):
    """n Japanese responses (plus English ones where asked), with their lengths and repetition flags."""

    responses_ja: list[str] = Field(default_factory=list)
    token_lengths: list[int] = Field(default_factory=list)
    repetition_flags: list[bool] = Field(default_factory=list)
    responses_en: list[str] | None = None
    usage: Usage = Usage()


class JudgeOutput(StrictModel):
    """One judgement and score per Japanese response (score None = no rating could be read).

    The judgement's format depends on the judge mode: see `lmsynth.pipeline.stages.judge`.
    """

    judgements: list[str] = Field(default_factory=list)
    scores: list[float | None] = Field(default_factory=list)
    usage: Usage = Usage()


class SelectOutput(StrictModel):
    """Best response for SFT and the DPO pair (indices into the responses)."""

    best: int | None = None
    dpo_chosen: int | None = None
    dpo_rejected: int | None = None


class SecondTurnOutput(StrictModel):
    """The two-turn conversation built on the best response (None when there is no best response)."""

    conversation: list[Message] | None = None
    failure: str | None = Field(
        None, description="Raw text of an answer still unusable after re-asks (the row stays single-turn)."
    )
    usage: Usage = Usage()


STAGE_OUTPUTS: dict[str, type[StrictModel]] = {
    "translate": TranslateOutput,
    "flags": FlagsOutput,
    "generate": GenerateOutput,
    "judge": JudgeOutput,
    "select": SelectOutput,
    "second_turn": SecondTurnOutput,
}
STAGE_FIELDS = frozenset(STAGE_OUTPUTS)  # the built-in stages: a field each; registered ones go in `outputs`
INSTRUCTION_COLUMNS: tuple[str, ...] = tuple(InstructionRecord.model_fields)


def column(output: StrictModel) -> bytes:
    """A stage output as its distilabel column (JSON, UTF-8)."""
    return output.__pydantic_serializer__.to_json(output)


class PipelineRow(StrictModel):
    """A typed view of one distilabel row: the instruction, its input position, and the stage outputs so far."""

    row_index: int = Field(ge=0)
    record: InstructionRecord
    translate: TranslateOutput | None = None
    flags: FlagsOutput | None = None
    generate: GenerateOutput | None = None
    judge: JudgeOutput | None = None
    select: SelectOutput | None = None
    second_turn: SecondTurnOutput | None = None
    outputs: dict[str, Any] = Field(default_factory=dict, description="Outputs of stages registered beyond these.")

    def output(self, stage: str) -> Any:
        """The output of `stage` (None when it has not run)."""
        return getattr(self, stage) if stage in STAGE_FIELDS else self.outputs.get(stage)

    @property
    def instruction_ja(self) -> str:
        """The translated instruction ('' before translation)."""
        return self.translate.instruction_ja if self.translate else ""

    @property
    def skipped(self) -> bool:
        """Nothing is generated for flagged (unsafe), empty or duplicate instructions."""
        f = self.flags
        return self.record.flagged or (f is not None and (f.empty or f.duplicate_of is not None))

    @classmethod
    def from_columns(cls, row: dict[str, Any]) -> PipelineRow:
        """Parse a distilabel row (stage columns are JSON, bytes or str; missing or null = not run yet)."""
        data: dict[str, Any] = {
            "row_index": row["row_index"],
            "record": InstructionRecord.model_validate({k: row[k] for k in INSTRUCTION_COLUMNS if k in row}),
        }
        for stage, model in STAGE_OUTPUTS.items():
            if row.get(stage):
                output = model.model_validate_json(row[stage])
                if stage in STAGE_FIELDS:
                    data[stage] = output
                else:
                    data.setdefault("outputs", {})[stage] = output
        return cls.model_validate(data)

    def to_columns(self) -> dict[str, Any]:
        """The flat distilabel row for this view."""
        row: dict[str, Any] = {"row_index": self.row_index, **self.record.model_dump(mode="json")}
        for stage in STAGE_OUTPUTS:
            value = self.output(stage)
            if value is not None:
                row[stage] = column(value)
        return row
