"""`prepare`: from an LMSYS-Chat-1M-schema source to the instruction sets the pipelines consume (SPEC §2).

For each conversation, in source order: keep the configured languages; keep the first user turn; route
moderation-flagged conversations to the separate `unsafe` set; carry `redacted` as the PII mark; tag
template instructions from the declarative rules file. Near-empty instructions are kept: the pipelines mark
them (`empty_user_instruction_ja`) and generate nothing for them, as the original release did. Only rows
with no user turn at all are dropped (`empty_source`).

The output folder is built in a temporary sibling and renamed into place at the end, so a failure midway
(bad line, unreadable file) leaves no partial output:

```
instructions.jsonl   InstructionRecord lines (records.PREPARED_INSTRUCTIONS)
unsafe.jsonl         InstructionRecord lines, flagged=true (records.PREPARED_UNSAFE)
stats.json           PrepareStats
_COMPLETE            written last
```
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from pydantic import Field, SecretStr

from lmsynth import constants
from lmsynth.config import StrictModel
from lmsynth.errors import ArgumentError, InputRecordError
from lmsynth.faults import kill_point
from lmsynth.io import atomic_dir, dump_json_line, parse_line, write_json
from lmsynth.outdir import check_out, mark, source_input
from lmsynth.progress import track
from lmsynth.records import (
    PREPARED_INSTRUCTIONS,
    PREPARED_MARKER,
    PREPARED_UNSAFE,
    InstructionRecord,
    SourceConversation,
)
from lmsynth.source import Source, open_source
from lmsynth.templates import TemplateRules, load_rules


logger = logging.getLogger(__name__)

PREPARED_STATS = "stats.json"
DEFAULT_LANGUAGES: tuple[str, ...] = ("Japanese", "English")

# Reasons a source row is dropped (keys of `PrepareStats.dropped`).
DROPPED_LANGUAGE = "language"
DROPPED_EMPTY_SOURCE = "empty_source"
DROP_REASONS: tuple[str, ...] = (DROPPED_LANGUAGE, DROPPED_EMPTY_SOURCE)


class PrepareStats(StrictModel):
    """Counters of one prepare run (`stats.json`). total = kept + unsafe + sum(dropped)."""

    source: str = Field(description="The source as given (path or hub id; the bundled sample's path).")
    source_fingerprint: str = Field(description="`Source.fingerprint()`: identifies the input, reveals no key.")
    languages: list[str] = Field(description="Languages kept, as LMSYS names them.")
    total: int = Field(ge=0, description="Rows read from the source.")
    kept: int = Field(ge=0, description="Records in instructions.jsonl (kept language, not flagged).")
    unsafe: int = Field(ge=0, description="Records in unsafe.jsonl (kept language, moderation-flagged).")
    pii: int = Field(ge=0, description="Written records marked `redacted` (both sets).")
    dropped: dict[str, int] = Field(description="Rows dropped, per reason: language, empty_source.")
    templates: dict[str, int] = Field(description="Written records (both sets) per template rule type.")
    templates_kept: dict[str, int] = Field(description="Records in instructions.jsonl per template rule type.")
    per_language: dict[str, int] = Field(description="Written records (both sets) per language.")


class PrepareResult(StrictModel):
    """What `prepare` wrote."""

    out_dir: Path
    instructions_path: Path
    unsafe_path: Path
    stats: PrepareStats


def prepare(
    source: str | Source | None,
    *,
    out_dir: Path | str,
    languages: tuple[str, ...] | list[str] = DEFAULT_LANGUAGES,
    rules_path: Path | str | None = None,
    token: SecretStr | None = None,
) -> PrepareResult:
    """Extract, filter and tag the first user turns of a source into `out_dir`.

    Args:
        source: a source spec for `open_source` (None: the bundled sample) or an opened `Source`.
        out_dir: output folder; replaced as a whole on success, untouched on failure.
        languages: LMSYS `language` values to keep.
        rules_path: template rules YAML (default: `constants.TEMPLATE_RULES`).
        token: hub token when `source` is a gated hub dataset (None: the client's login or `HF_TOKEN`).

    Returns:
        Paths written and the counters.

    Raises:
        ArgumentError: `languages` is empty.
        ConfigError: the rules file is invalid (names the rule's key).
        InputRecordError: a source row is malformed or repeats an id (names file, line, field).
        SourceError: the source cannot be read.
    """
    langs = tuple(dict.fromkeys(x.strip() for x in languages if x.strip()))
    if not langs:
        raise ArgumentError("languages", "must name at least one language, e.g. Japanese,English")
    rules_file = rules_path if rules_path is not None else constants.TEMPLATE_RULES
    real_out = check_out(out_dir, kind="prepared", inputs=[source_input(source), rules_file])
    rules = load_rules(rules_file)
    src = source if isinstance(source, Source) else open_source(source, token=token)
    out_dir = Path(out_dir)

    counts: Counter[str] = Counter()
    dropped = Counter({reason: 0 for reason in DROP_REASONS})
    templates = Counter({t: 0 for t in rules.types})
    templates_kept = Counter({t: 0 for t in rules.types})
    per_language: Counter[str] = Counter()
    with atomic_dir(real_out, private=True) as tmp:  # LMSYS-Chat-1M text: gated
        mark(tmp, "prepared")
        with (
            open(tmp / PREPARED_INSTRUCTIONS, "w", encoding="utf-8") as safe_f,
            open(tmp / PREPARED_UNSAFE, "w", encoding="utf-8") as unsafe_f,
        ):
            for conv in track(src, "Preparing instructions", total=src.estimated_rows()):
                counts["total"] += 1
                reason = drop_reason(conv, languages=langs)
                if reason is not None:
                    dropped[reason] += 1
                    continue
                rec = to_instruction(conv, rules)
                (unsafe_f if rec.flagged else safe_f).write(dump_json_line(rec) + "\n")
                kill_point("prepare.writing")
                counts["unsafe" if rec.flagged else "kept"] += 1
                counts["pii"] += rec.redacted
                per_language[rec.language] += 1
                if rec.is_template_instruction is not None:
                    templates[rec.is_template_instruction] += 1
                    if not rec.flagged:
                        templates_kept[rec.is_template_instruction] += 1
        stats = PrepareStats(
            source=src.name,
            source_fingerprint=src.fingerprint(),
            languages=list(langs),
            total=counts["total"],
            kept=counts["kept"],
            unsafe=counts["unsafe"],
            pii=counts["pii"],
            dropped=dict(dropped),
            templates=dict(templates),
            templates_kept=dict(templates_kept),
            per_language=dict(sorted(per_language.items())),
        )
        write_json(tmp / PREPARED_STATS, stats.model_dump(mode="json"))
        (tmp / PREPARED_MARKER).write_text("ok\n", encoding="utf-8")  # last: the folder is complete
    logger.info("prepared %s: %d kept, %d unsafe of %d", src, stats.kept, stats.unsafe, stats.total)
    return PrepareResult(
        out_dir=out_dir,
        instructions_path=out_dir / PREPARED_INSTRUCTIONS,
        unsafe_path=out_dir / PREPARED_UNSAFE,
        stats=stats,
    )


def drop_reason(conv: SourceConversation, *, languages: tuple[str, ...]) -> str | None:
    """Why a conversation is not prepared (a `DROP_REASONS` value), or None to keep it."""
    if conv.language not in languages:
        return DROPPED_LANGUAGE
    if not any(m.role == "user" for m in conv.conversation):
        return DROPPED_EMPTY_SOURCE
    return None


def to_instruction(conv: SourceConversation, rules: TemplateRules) -> InstructionRecord:
    """The instruction record of a kept conversation: its first user turn, template type, PII and flag."""
    text = conv.first_user_content
    return InstructionRecord(
        conversation_id=conv.conversation_id,
        language=conv.language,
        instruction=text,
        is_template_instruction=rules.match(text),
        redacted=conv.redacted,
        flagged=conv.flagged,
    )


def is_prepared(out_dir: Path | str) -> bool:
    """Whether `out_dir` is a finished prepare output (its completion marker exists)."""
    return (Path(out_dir) / PREPARED_MARKER).is_file()


def read_stats(out_dir: Path | str) -> PrepareStats:
    """The `stats.json` of a prepare output.

    Raises:
        InputRecordError: the file is missing or does not validate.
    """
    path = Path(out_dir) / PREPARED_STATS
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputRecordError(path, None, None, f"cannot read: {e.strerror or e}") from e
    return parse_line(text, PrepareStats, path=path, lineno=None)
