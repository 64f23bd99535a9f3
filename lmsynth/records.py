"""The record models that flow between stages: source rows, prepared instructions, synthesized records.

Data flows one way: `SourceConversation` (LMSYS-Chat-1M schema) → `InstructionRecord` (prepare) →
`SynthRecord` (pipelines, SPEC §3) → public Parquet + `GatedInstruction` (release) → recovered records.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmsynth.config import StrictModel
from lmsynth.errors import InputRecordError
from lmsynth.fingerprint import FINGERPRINT_VERSION
from lmsynth.io import parse_line, read_jsonl, write_json
from lmsynth.sampling import SamplingConfig


if TYPE_CHECKING:
    from lmsynth.llm import Completion


class Message(StrictModel):
    """One chat turn."""

    role: Literal["system", "user", "assistant"]
    content: str


Conversation = list[Message]


# ---------------------------------------------------------------------------
# Source: LMSYS-Chat-1M (SPEC §2). Lenient on extra keys: the hub adds none today, but may.
# ---------------------------------------------------------------------------


class SourceMessage(BaseModel):
    """A message as LMSYS-Chat-1M stores it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    content: str
    role: str


# The 11 OpenAI moderation categories, in the order LMSYS-Chat-1M stores them.
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


class Moderation(BaseModel):
    """OpenAI moderation result for one message."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    categories: dict[str, bool] = Field(default_factory=dict)
    category_scores: dict[str, float] = Field(default_factory=dict)
    flagged: bool


class SourceConversation(BaseModel):
    """One row of LMSYS-Chat-1M."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    conversation_id: str = Field(min_length=1)
    model: str
    conversation: list[SourceMessage] = Field(min_length=1)
    turn: int = Field(ge=1)
    language: str
    openai_moderation: list[Moderation]
    redacted: bool

    @property
    def first_user_content(self) -> str:
        """The first user message (the instruction lmsynth works on)."""
        for msg in self.conversation:
            if msg.role == "user":
                return msg.content
        return ""

    @property
    def flagged(self) -> bool:
        """Any message flagged by moderation routes the conversation to the `unsafe` set."""
        return any(m.flagged for m in self.openai_moderation)


# ---------------------------------------------------------------------------
# Prepared instructions (output of `lmsynth prepare`, input of the pipelines). Gated: contains LMSYS text.
# ---------------------------------------------------------------------------


class InstructionRecord(StrictModel):
    """A first-turn user instruction ready for translation and generation."""

    conversation_id: str = Field(min_length=1)
    language: str = Field(description="LMSYS `language` value, e.g. 'English', 'Japanese'.")
    instruction: str = Field(description="The first user turn, as in the source.")
    is_template_instruction: str | None = Field(None, description="Template type from the rules file.")
    redacted: bool = Field(description="The source marked names as redacted: PII was present.")
    flagged: bool = Field(False, description="Moderation flagged the conversation (the `unsafe` set).")


# ---------------------------------------------------------------------------
# Synthesized records (SPEC §3): what the pipelines write and the release consumes.
# ---------------------------------------------------------------------------


class ScoringAnnotation(StrictModel):
    """Judge result for one response, parallel to `synthesized_assistant_responses`."""

    response_token_length: int = Field(ge=0)
    judgement: str = Field(
        description=(
            "`single` judge: its whole answer (rationale and rating), or the rationale with `structured_output`; "
            "`ultrafeedback`: JSON {aspect: {rating, rationale, types, rationale_for_rating}}, rating 1-5, 'N/A' "
            "or null, with `raw` (the judge's answer) on a null. Unreadable answers keep their raw text."
        )
    )
    repetition_flag: bool
    preference_score: float | None = Field(
        description="Judge score (single: 0-10; ultrafeedback: mean of the numeric aspect ratings); None when no "
        "rating could be read after re-asks (a recorded failure, never a guess)."
    )


class SynthRecord(StrictModel):
    """One conversation of the synthesized portion (SPEC §3).

    `translated_conversation` is gated (LMSYS-derived): the release puts it only in encrypted files.
    """

    conversation_id: str = Field(min_length=1)
    duplicate_user_instruction_ja: str | None = None
    empty_user_instruction_ja: bool = False
    translated_conversation: list[Message] = Field(default_factory=list)
    is_template_instruction: str | None = None
    synthesized_assistant_responses: list[Message] = Field(default_factory=list)
    synthesized_response_scoring_annotations: list[ScoringAnnotation] = Field(default_factory=list)
    synthesized_assistant_responses_en: list[Message] | None = None
    synthesized_multiturn_conversation: list[list[Message]] | None = None


class GatedInstruction(StrictModel):
    """One line of the encrypted `...-ja.jsonl.gz.gpg` files."""

    conversation_id: str = Field(min_length=1)
    translated_conversation: list[Message]


# Gated strings shorter than this (UTF-8 bytes) are not treated as leaks: "hi" or "Translate to French"
# occur in any text. The leak guard searches every longer one; generated text never quotes one.
GATED_MIN_BYTES = 24
QUOTE_PLACEHOLDER = "[…]"


def redact_quotes(text: str, gated: Sequence[str]) -> str:
    """`text` with verbatim quotes of the gated strings (≥ `GATED_MIN_BYTES`) replaced by `QUOTE_PLACEHOLDER`.

    Models echo the question ("You asked: …"); published text must not carry the gated instruction.
    """
    for g in gated:
        if len(g.encode("utf-8")) >= GATED_MIN_BYTES and g in text:
            text = text.replace(g, QUOTE_PLACEHOLDER)
    return text


# The public fields of a SynthRecord: everything except the gated translation.
GATED_FIELDS: frozenset[str] = frozenset({"translated_conversation"})
PUBLIC_FIELDS: tuple[str, ...] = tuple(f for f in SynthRecord.model_fields if f not in GATED_FIELDS)


# ---------------------------------------------------------------------------
# Folder contracts between stages.
# ---------------------------------------------------------------------------

# `lmsynth prepare --out DIR` writes these (InstructionRecord lines) plus stats.json.
PREPARED_MARKER = "_COMPLETE"  # written last by `lmsynth prepare`: the folder is finished
PREPARED_INSTRUCTIONS = "instructions.jsonl"  # Japanese/English, not flagged
PREPARED_UNSAFE = "unsafe.jsonl"  # moderation-flagged: translated for the `+unsafe` set, never answered

# `lmsynth run ... --out DIR` writes these: SynthRecord shards in name order.
RUN_RECORDS_DIR = "records"  # one SynthRecord per prepared (safe) instruction
RUN_UNSAFE_DIR = "unsafe"  # SynthRecords of flagged instructions: translation fields only
RUN_INFO_FILE = "run.json"  # `RunInfo`, written last: its presence marks a finished run folder
RUN_RECORDS_PER_FILE = 10_000  # records per part file, unless the pipeline's `shard_records` says otherwise


class Usage(StrictModel):
    """What one stage spent on one row (summed by the run for `run.json` and `run_report.json`)."""

    requests: int = Field(0, ge=0, description="Prompts sent, re-asks included.")
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    reasks: int = Field(0, ge=0, description="Prompts sent again because their answer could not be read.")
    failures: int = Field(0, ge=0, description="Answers still unreadable after every re-ask (recorded, not fatal).")

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in Usage.model_fields})

    @classmethod
    def of(cls, completions: Sequence[Completion], *, reasks: int = 0) -> Usage:
        """One request's cost: its prompt counted once, its completions (n of them) summed."""
        return cls(
            requests=1,
            prompt_tokens=completions[0].prompt_tokens if completions else 0,
            completion_tokens=sum(c.completion_tokens for c in completions),
            reasks=reasks,
        )


class StageModel(StrictModel):
    """Which model a stage used."""

    backend: str
    model: str
    revision: str | None = None


class RunCounts(StrictModel):
    """What the run produced."""

    instructions: int = Field(ge=0, description="Safe instructions in (= records out).")
    unsafe: int = Field(ge=0)
    translated: int = Field(ge=0)
    empty: int = Field(ge=0)
    duplicate: int = Field(ge=0)
    responses_ja: int = Field(ge=0)
    responses_en: int = Field(ge=0)
    judge_failures: int = Field(ge=0, description="Responses whose rating could not be parsed.")
    multiturn: int = Field(ge=0)


class RunInfo(StrictModel):
    """`run.json`: enough to tell which pipeline, models, settings and inputs made a run folder."""

    pipeline: str
    fingerprint: str
    fingerprint_version: int = FINGERPRINT_VERSION
    input_digest: str
    stage_fingerprints: dict[str, str]
    models: dict[str, StageModel] = Field(description="Stage → model (translate, generate, judge, second_turn).")
    generator: StageModel
    judge: StageModel | None = None
    sampling: dict[str, SamplingConfig]
    counts: RunCounts
    tokens: dict[str, Usage] = Field(description="Tokens per stage, over all rows (cached or not).")
    shard_records: int = Field(
        RUN_RECORDS_PER_FILE, ge=1, description="Records per `part-NNNNN.jsonl` (the pipeline's `shard_records`)."
    )


def record_counts(record: SynthRecord, *, judged: bool = True) -> dict[str, int]:
    """What one safe record adds to `RunCounts` (the runner sums these row by row; `translated` comes apart)."""
    return {
        "instructions": 1,
        "empty": int(record.empty_user_instruction_ja),
        "duplicate": int(record.duplicate_user_instruction_ja is not None),
        "responses_ja": len(record.synthesized_assistant_responses),
        "responses_en": len(record.synthesized_assistant_responses_en or []),
        "judge_failures": sum(1 for a in record.synthesized_response_scoring_annotations if a.preference_score is None)
        if judged
        else 0,
        "multiturn": int(bool(record.synthesized_multiturn_conversation)),
    }


def read_run_info(run_dir: Path | str, *, text: str | None = None) -> RunInfo:
    """A run folder's `run.json`, validated: the one reader of that file (runner, gather, telemetry, release).

    Args:
        run_dir: The run folder (what errors name, with the file).
        text: The file's content when the caller read it itself (a run folder behind fsspec).

    Raises:
        InputRecordError: the file is missing or does not validate (names the file and the field).
    """
    path = f"{str(run_dir).rstrip('/')}/{RUN_INFO_FILE}" if text is not None else Path(run_dir) / RUN_INFO_FILE
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise InputRecordError(path, None, None, f"cannot read: {e.strerror or e}") from e
    return parse_line(text, RunInfo, path=path, lineno=None)


def write_run_info(run_dir: Path | str, info: RunInfo) -> Path:
    """Write `run.json` into `run_dir` atomically (call it last: it marks the folder finished); return its path."""
    path = Path(run_dir) / RUN_INFO_FILE
    write_json(path, info.model_dump(mode="json"))
    return path


def iter_synth_records(path: Path | str) -> Iterator[SynthRecord]:
    """Stream SynthRecords from a JSONL file, a folder of `*.jsonl[.gz]` shards (name order), or a run folder."""
    path = Path(path)
    if (path / RUN_RECORDS_DIR).is_dir():
        path = path / RUN_RECORDS_DIR
    files = sorted(p for p in path.glob("*.jsonl*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        yield from read_jsonl(f, SynthRecord)
