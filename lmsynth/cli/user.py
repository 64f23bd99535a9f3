"""CLI commands for users of a release: `recover` and `export sft|dpo`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from lmsynth.cli.app import FromOpt, PassphraseFileOpt, SourceOpt, app, out


export_app = typer.Typer(
    help="Write TRL-ready folders (Parquet + README.md with configs:) from a recovered release.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(export_app, name="export")


class Lang(str, Enum):
    """Which instruction language an SFT export uses."""

    ja = "ja"
    en = "en"
    both = "both"


class SftField(str, Enum):
    """Which assistant side an SFT export takes."""

    best = "best"
    multiturn = "multiturn"


InputOpt = Annotated[Path, typer.Option("--input", help="A folder written by `lmsynth recover`.")]
OutOpt = Annotated[Path, typer.Option("--out", help="The folder to write (replaced when the export succeeds).")]
ExcludePiiOpt = Annotated[bool, typer.Option("--exclude-pii", help="Drop conversations LMSYS marked `redacted`.")]
ExcludeTemplatesOpt = Annotated[bool, typer.Option("--exclude-templates", help="Drop template instructions.")]
MinScoreOpt = Annotated[float | None, typer.Option("--min-score", help="Drop when the best score is below this.")]
DropRepOpt = Annotated[bool, typer.Option("--drop-repetitions", help="Never use responses flagged as repetitions.")]
TestSizeOpt = Annotated[float, typer.Option("--test-size", help="Fraction of conversations in the test split.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the stable train/test split.")]
SubsetOpt = Annotated[list[str] | None, typer.Option("--subset", help="Subset to export (repeatable; default all).")]
PushOpt = Annotated[str | None, typer.Option("--push", help="Publish the folder to hf://ORG/NAME (or a target).")]
PrivateOpt = Annotated[bool, typer.Option("--private", help="Make the --push repo private before uploading.")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Tag for --push (default: <sft|dpo>-<revision>).")]


@app.command("recover")
def recover_cmd(
    target: FromOpt = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Release tag to recover (default v0.5), or a Hub revision.")
    ] = None,
    source: SourceOpt = None,
    out_dir: OutOpt = Path("recovered"),
    passphrase_file: PassphraseFileOpt = None,
    include_unsafe: Annotated[bool, typer.Option("--include-unsafe", help="Use the `+unsafe` set.")] = False,
    subset: Annotated[
        list[str] | None,
        typer.Option("--subset", help="Original release only: llama3.1, gemma2 or gemma3 (repeatable)."),
    ] = None,
) -> None:
    """Recover complete records: public fields + decrypted JA instructions + the source's English instruction.

    Reads lmsynth's releases and the original tokyotech-llm/lmsys-chat-1m-synth layout (recognised by its files).

    \b
    Example: lmsynth recover --from hub --revision v0.5 --source lmsys-chat-1m/ --out recovered
    Example: lmsynth recover --from hf://datasets/tokyotech-llm/lmsys-chat-1m-synth --subset gemma3
             --source lmsys-chat-1m/ --passphrase-file key.txt --out recovered
    """
    from lmsynth.errors import ArgumentError
    from lmsynth.original.layout import detect
    from lmsynth.passphrase import resolve_passphrase
    from lmsynth.progress import enabled
    from lmsynth.recover import recover

    original = detect(target or "hub", revision=revision)
    if original is not None:
        from lmsynth.original.recover import original_passphrase, recover_original

        key = original_passphrase(passphrase_file)
        with enabled():
            res = recover_original(
                original, subsets=subset, source=source, out_dir=out_dir, passphrase=key, include_unsafe=include_unsafe
            )
    else:
        if subset:
            raise ArgumentError(
                "--subset", "applies to the original release layout only (lmsynth releases recover all)"
            )
        passphrase = resolve_passphrase(passphrase_file=passphrase_file, source=None) if passphrase_file else None
        with enabled():
            res = recover(
                target or "hub",
                revision=revision or "v0.5",
                source=source,
                out_dir=out_dir,
                passphrase=passphrase,
                include_unsafe=include_unsafe,
            )
    counts = {
        name: f"{s.written} written, {s.merged} merged, {s.missing_in_source} missing in source, "
        f"{s.unsafe_included} unsafe"
        + (f", {s.failed_scores} failed scores (-1) as null" if s.failed_scores is not None else "")
        for name, s in res.report.subsets.items()
    }
    out.result(f"Recovered {res.report.revision}", out=res.out_dir, **counts)


@export_app.command("sft")
def export_sft_cmd(
    input_dir: InputOpt,
    out_dir: OutOpt,
    lang: Annotated[Lang, typer.Option("--lang", help="Instruction language.")] = Lang.ja,
    field: Annotated[SftField, typer.Option("--field", help="Best response or the multiturn conversation.")] = (
        SftField.best
    ),
    exclude_pii: ExcludePiiOpt = False,
    exclude_templates: ExcludeTemplatesOpt = False,
    min_score: MinScoreOpt = None,
    drop_repetitions: DropRepOpt = False,
    include_failed_scores: Annotated[
        bool,
        typer.Option(
            "--include-failed-scores", help="Let a response whose rating failed be chosen, below scored ones."
        ),
    ] = False,
    test_size: TestSizeOpt = 0.0,
    seed: SeedOpt = 0,
    subset: SubsetOpt = None,
    push: PushOpt = None,
    private: PrivateOpt = False,
    tag: TagOpt = None,
) -> None:
    """SFT rows {"messages": [...]}: one conversation per instruction with its best-scored response.

    \b
    Example: lmsynth export sft --input recovered --out sft-ja --exclude-pii --min-score 7 --test-size 0.01
    """
    from lmsynth.export.sft_dpo import export_sft
    from lmsynth.progress import enabled

    with enabled():
        res = export_sft(
            input_dir,
            out_dir=out_dir,
            lang=lang.value,
            field=field.value,
            exclude_pii=exclude_pii,
            exclude_templates=exclude_templates,
            min_score=min_score,
            drop_repetitions=drop_repetitions,
            include_failed_scores=include_failed_scores,
            test_size=test_size,
            seed=seed,
            subsets=subset,
        )
    _report(res, push=push, private=private, tag=tag)


@export_app.command("dpo")
def export_dpo_cmd(
    input_dir: InputOpt,
    out_dir: OutOpt,
    min_margin: Annotated[float, typer.Option("--min-margin", help="Least score gap between chosen and rejected.")] = (
        0.0
    ),
    exclude_pii: ExcludePiiOpt = False,
    exclude_templates: ExcludeTemplatesOpt = False,
    min_score: MinScoreOpt = None,
    drop_repetitions: DropRepOpt = False,
    test_size: TestSizeOpt = 0.0,
    seed: SeedOpt = 0,
    subset: SubsetOpt = None,
    push: PushOpt = None,
    private: PrivateOpt = False,
    tag: TagOpt = None,
) -> None:
    """DPO rows {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}: best vs worst response.

    \b
    Example: lmsynth export dpo --input recovered --out dpo-ja --min-margin 2 --test-size 0.01
    """
    from lmsynth.export.sft_dpo import export_dpo
    from lmsynth.progress import enabled

    with enabled():
        res = export_dpo(
            input_dir,
            out_dir=out_dir,
            min_margin=min_margin,
            exclude_pii=exclude_pii,
            exclude_templates=exclude_templates,
            min_score=min_score,
            drop_repetitions=drop_repetitions,
            test_size=test_size,
            seed=seed,
            subsets=subset,
        )
    _report(res, push=push, private=private, tag=tag)


# Private helpers


def _report(res: object, *, push: str | None, private: bool, tag: str | None) -> None:
    from lmsynth.export.push import publish_export
    from lmsynth.export.sft_dpo import ExportResult, export_tag

    assert isinstance(res, ExportResult)
    rows = ", ".join(f"{split} {n}" for split, n in sorted(res.rows.items()))
    out.result(f"Exported {res.config}", out=res.out_dir, rows=rows, kept=res.counts.get("kept", 0))
    if push:
        pub = publish_export(res.out_dir, target_uri=push, tag=tag or export_tag(res), private=private)
        out.result("Pushed", target=pub.target, tag=pub.tag, commit=pub.commit, private=private)
