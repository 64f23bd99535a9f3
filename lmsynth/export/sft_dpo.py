"""`export_sft` / `export_dpo`: turn recovered records into folders TRL trainers load in one line.

The output folder holds Parquet shards under `sft/` or `dpo/` (splits `train` and `test`) and a README.md
whose `configs:` make `datasets.load_dataset(OUT, "sft")` work, in the shapes TRL's `SFTTrainer` and
`DPOTrainer` take without mapping. Row selection follows the original release's semantics: the best
response by `preference_score` (ties go to the lowest index; a failed rating is never a candidate), and
duplicate or empty instructions are never exported. The split is a stable hash of `conversation_id` and
the seed, so it does not depend on row order, process or RNG state.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from lmsynth.config import StrictModel, dotted
from lmsynth.errors import ExportError
from lmsynth.export.selection import (
    DROP_DUPLICATE,
    DROP_EMPTY,
    DROP_PII,
    DROP_TEMPLATE,
    KEPT,
    DPORow,
    ExportFilters,
    SFTField,
    SFTRow,
    dpo_row,
    sft_row,
    split_of,
)
from lmsynth.faults import kill_point
from lmsynth.io import atomic_dir, write_text
from lmsynth.outdir import check_out
from lmsynth.progress import track
from lmsynth.recover import REPORT_FILE, RecoveredRecord, RecoverReport, iter_recovered
from lmsynth.tree.manifest_json import write_manifest


logger = logging.getLogger(__name__)

Lang = Literal["ja", "en", "both"]
SPLITS = ("train", "test")
SHARD_ROWS = 100_000  # rows per Parquet shard
_WRITE_BATCH = 1_000  # rows buffered before a Parquet row group is appended: bounds memory


class ExportResult(StrictModel):
    """What an export wrote."""

    out_dir: Path
    config: Literal["sft", "dpo"]
    revision: str = Field(description="The release version the input was recovered from.")
    rows: dict[str, int] = Field(description="Rows per split.")
    counts: dict[str, int] = Field(description="Records kept and dropped, per filter.")
    files: list[str]


def export_sft(
    input_dir: Path | str,
    *,
    out_dir: Path | str,
    lang: Lang = "ja",
    field: SFTField = "best",
    exclude_pii: bool = False,
    exclude_templates: bool = False,
    min_score: float | None = None,
    drop_repetitions: bool = False,
    include_failed_scores: bool = False,
    test_size: float = 0.0,
    seed: int = 0,
    subsets: list[str] | None = None,
) -> ExportResult:
    """Write one SFT conversation per instruction: the user turn and the best response, or the multiturn one.

    Args:
        input_dir: a folder written by `recover`.
        out_dir: the folder to write (`sft/*.parquet` + README.md); replaced only on success.
        lang: `ja` (JA instruction + best JA response), `en` (English instruction + EN response) or both.
        field: `best` or `multiturn` (the subset's two-turn conversation where it has one, else best).
        exclude_pii: drop conversations the source marked `redacted` (and those whose source row is missing).
        exclude_templates: drop template instructions.
        min_score: drop instructions whose best JA score is below this (EN responses carry no score).
        drop_repetitions: responses flagged as repetitions are never chosen.
        include_failed_scores: a response whose rating failed may be chosen, below every scored one (for an
            instruction none of whose ratings could be read); never with `min_score`, which it cannot pass.
        test_size: fraction of conversations in the `test` split.
        seed: changes which conversations land in `test`.
        subsets: recovered subsets to read (default: all).

    Returns:
        Rows per split, counts per filter and the files written.

    Raises:
        ExportError: bad arguments, or an input folder that `recover` did not write.
    """
    filters = _filters(
        exclude_pii=exclude_pii,
        exclude_templates=exclude_templates,
        min_score=min_score,
        drop_repetitions=drop_repetitions,
        test_size=test_size,
        seed=seed,
        subsets=subsets,
    )
    if lang not in ("ja", "en", "both"):
        raise ExportError(f"`lang` must be ja, en or both, not {lang!r}")
    if field not in ("best", "multiturn"):
        raise ExportError(f"`field` must be best or multiturn, not {field!r}")
    counts: Counter[str] = Counter()

    def rows() -> Iterator[tuple[str, SFTRow]]:
        for rec in _records(input_dir, filters, counts):
            for row_lang in ("ja", "en") if lang == "both" else (lang,):
                row = sft_row(
                    rec,
                    lang=row_lang,
                    field=field,
                    filters=filters,
                    counts=counts,
                    include_failed=include_failed_scores,
                )
                if row is not None:
                    yield rec.conversation_id, row

    options = {"lang": lang, "field": field, "include_failed_scores": include_failed_scores}
    return _export("sft", input_dir, rows(), out_dir=out_dir, filters=filters, counts=counts, options=options)


def export_dpo(
    input_dir: Path | str,
    *,
    out_dir: Path | str,
    min_margin: float = 0.0,
    exclude_pii: bool = False,
    exclude_templates: bool = False,
    min_score: float | None = None,
    drop_repetitions: bool = False,
    test_size: float = 0.0,
    seed: int = 0,
    subsets: list[str] | None = None,
) -> ExportResult:
    """Write one preference pair per instruction: best vs worst JA response by `preference_score`.

    Args:
        input_dir: a folder written by `recover`.
        out_dir: the folder to write (`dpo/*.parquet` + README.md); replaced only on success.
        min_margin: the chosen score must exceed the rejected one by at least this (ties are always skipped).
        exclude_pii: drop conversations the source marked `redacted` (and those whose source row is missing).
        exclude_templates: drop template instructions.
        min_score: drop pairs whose chosen score is below this.
        drop_repetitions: responses flagged as repetitions are never used.
        test_size: fraction of conversations in the `test` split.
        seed: changes which conversations land in `test`.
        subsets: recovered subsets to read (default: all).

    Returns:
        Rows per split, counts per filter and the files written.

    Raises:
        ExportError: bad arguments, or an input folder that `recover` did not write.
    """
    if min_margin < 0:
        raise ExportError(f"`min_margin` must be >= 0, not {min_margin}")
    filters = _filters(
        exclude_pii=exclude_pii,
        exclude_templates=exclude_templates,
        min_score=min_score,
        drop_repetitions=drop_repetitions,
        test_size=test_size,
        seed=seed,
        subsets=subsets,
    )
    counts: Counter[str] = Counter()

    def rows() -> Iterator[tuple[str, DPORow]]:
        for rec in _records(input_dir, filters, counts):
            row = dpo_row(rec, min_margin=min_margin, filters=filters, counts=counts)
            if row is not None:
                yield rec.conversation_id, row

    options = {"min_margin": min_margin}
    return _export("dpo", input_dir, rows(), out_dir=out_dir, filters=filters, counts=counts, options=options)


def export_tag(result: ExportResult) -> str:
    """The default tag of a pushed export: `<config>-<release version>`, e.g. `sft-v0.5`."""
    return f"{result.config}-{result.revision}"


# Private helpers


def _filters(**options: object) -> ExportFilters:
    """Validate the shared options, naming the bad one (`test_size` must be ...) in one line."""
    try:
        return ExportFilters.model_validate(options)
    except ValidationError as e:
        first = e.errors()[0]
        raise ExportError(f"`{dotted(first['loc'])}`: {first['msg']}") from None


def _read_report(input_dir: Path) -> RecoverReport:
    path = input_dir / REPORT_FILE
    if not path.is_file():
        raise ExportError(f"{input_dir}: no {REPORT_FILE}; point --input at a folder written by `lmsynth recover`")
    return RecoverReport.model_validate_json(path.read_text(encoding="utf-8"), strict=True)


def _records(input_dir: Path | str, filters: ExportFilters, counts: Counter[str]) -> Iterator[RecoveredRecord]:
    """Stream recovered records that pass the record-level filters, counting each drop."""
    input_dir = Path(input_dir)
    report = _read_report(input_dir)
    names = filters.subsets or sorted(report.subsets)
    unknown = sorted(set(names) - set(report.subsets))
    if unknown:
        raise ExportError(f"`subsets`: {', '.join(unknown)} not in {input_dir} (has: {', '.join(report.subsets)})")
    model = _record_model(report)
    for name in names:
        for rec in track(iter_recovered(input_dir / name, model), f"Exporting {name}"):
            counts["records"] += 1
            if rec.duplicate_user_instruction_ja is not None:
                counts[DROP_DUPLICATE] += 1
            elif rec.empty_user_instruction_ja or not _ja_instruction(rec).strip():
                counts[DROP_EMPTY] += 1
            elif filters.exclude_pii and rec.redacted is not False:
                counts[DROP_PII] += 1
            elif filters.exclude_templates and rec.is_template_instruction is not None:
                counts[DROP_TEMPLATE] += 1
            else:
                yield rec


def _record_model(report: RecoverReport) -> type[RecoveredRecord]:
    """The original release's records keep fields lmsynth does not know; lmsynth's own are read strictly."""
    if report.layout == "original":
        from lmsynth.original.models import OriginalRecoveredRecord

        return OriginalRecoveredRecord
    return RecoveredRecord


def _ja_instruction(rec: RecoveredRecord) -> str:
    return rec.translated_conversation[0].content if rec.translated_conversation else ""


def _export(
    config: Literal["sft", "dpo"],
    input_dir: Path | str,
    rows: Iterable[tuple[str, SFTRow | DPORow]],
    *,
    out_dir: Path | str,
    filters: ExportFilters,
    counts: Counter[str],
    options: dict,
) -> ExportResult:
    """Write rows into split shards and the card, all inside one atomically swapped folder."""
    from lmsynth.export.export_card import render_card
    from lmsynth.export.parquet import SplitWriter

    input_dir, shown = Path(input_dir), Path(out_dir)
    out_dir = check_out(out_dir, kind="export", inputs=[input_dir])
    report = _read_report(input_dir)
    with atomic_dir(out_dir, private=True) as tmp:  # the gated instructions are in every row
        kill_point("export.writing", out_dir)
        writer = SplitWriter(tmp, config=config, shard_rows=SHARD_ROWS, batch_rows=_WRITE_BATCH)
        with writer:
            for cid, row in rows:
                writer.add(split_of(cid, test_size=filters.test_size, seed=filters.seed), row)
        files = writer.files
        if not sum(writer.rows.values()):
            # `datasets` cannot load a config whose only split is empty: refuse rather than write that.
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != KEPT)
            raise ExportError(f"no {config} rows passed the filters ({dropped}); nothing written to {shown}")
        card = render_card(
            config=config,
            rows=writer.rows,
            counts=dict(counts),
            filters=filters,
            options=options,
            report=report,
            subsets=filters.subsets or sorted(report.subsets),
            files=files,
        )
        write_text(tmp / "README.md", card)
        stats = {"config": config, "rows": writer.rows, "counts": dict(sorted(counts.items())), **options}
        write_text(tmp / "export_stats.json", json.dumps(stats, indent=2, sort_keys=True) + "\n")
        # MANIFEST.json over every file, so the folder publishes through the targets like a release tree.
        write_manifest(tmp, version=report.revision)
    logger.info("exported %s rows to %s", sum(writer.rows.values()), shown)
    return ExportResult(
        out_dir=shown, config=config, revision=report.revision, rows=writer.rows, counts=dict(counts), files=files
    )
