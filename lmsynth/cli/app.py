"""The Typer app, shared options, the output object and the error table."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lmsynth import constants, errors


HELP = """\
Build, judge and publish synthetic conversation datasets in the style of LMSYS-Chat-1M-Synth.

The flow, one command per stage (each stage reads the previous one's output):

\b
  1. lmsynth prepare  --source SRC --out runs/prepared     first user turns, language filter, unsafe set, templates
  2. lmsynth run      pipelines/demo.yaml --input runs/prepared --out runs/demo
                                                           translate EN→JA, generate n responses, judge, select
  3. lmsynth release  v0.5 [--to TARGET] [--dry-run]       cards, Parquet, encrypted JA instructions, MANIFEST.json
  4. lmsynth verify   v0.5 --from TARGET                   checksums, load_dataset per config, decrypt counts
  5. lmsynth recover  --from TARGET --revision v0.5 --source SRC --out DIR     (users who accepted LMSYS-Chat-1M)
  6. lmsynth export   sft|dpo --input DIR --out OUT        TRL-ready folders

\b
`lmsynth demo` runs 1–4 on the bundled sample. `lmsynth key --source SRC` prints the decryption key.
Without --source, commands use the bundled sample (written by the project in the LMSYS-Chat-1M schema).
Set LMSYNTH_DEBUG=1 to see tracebacks.
"""

app = typer.Typer(
    help=HELP, no_args_is_help=True, rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False
)


@app.callback()
def _root() -> None:
    """Before any command: remove what killed lmsynth commands left (scratch and run work folders; never a live one's).

    A killed run's work folder holds translated (gated) instructions: any later command removes it, not only a run.
    """
    from lmsynth.pipeline.workdir import WORK_DIR, clean_stale_work_dirs
    from lmsynth.scratch import clean_stale

    clean_stale()
    clean_stale_work_dirs(constants.CACHE_DIR / WORK_DIR)


class Output:
    """All CLI output goes through here: results on stdout, messages and errors on stderr."""

    def __init__(self) -> None:
        self.stdout = Console(highlight=False, soft_wrap=True)
        self.stderr = Console(stderr=True, highlight=False, soft_wrap=True)

    def result(self, message: str, **fields: object) -> None:
        """A finished operation and its key facts, one `key: value` per line."""
        self.stdout.print(f"[bold green]✓[/] {message}")
        for key, value in fields.items():
            self.stdout.print(f"  {key}: {value}", markup=False)

    def info(self, message: str) -> None:
        """A message for the person at the terminal (stderr)."""
        self.stderr.print(message, markup=False)

    def raw(self, text: str) -> None:
        """Exactly `text` on stdout (for commands whose output is piped)."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def error(self, message: str) -> None:
        """`Error: <message>` on stderr."""
        self.stderr.print(f"Error: {message}", markup=False)


out = Output()


# Shared options, declared once.
SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="LMSYS-Chat-1M-schema JSONL/Parquet file or folder, or a hub dataset id (lmsys/lmsys-chat-1m). "
        "Default: the bundled sample.",
    ),
]
VersionArg = Annotated[str, typer.Argument(help="Release version, e.g. v0.5 (reads release/<version>.yaml).")]
TargetOpt = Annotated[
    str | None, typer.Option("--to", help="Target: a folder, hf://ORG/NAME or ms://ORG/NAME. Default: the manifest's.")
]
FromOpt = Annotated[
    str | None, typer.Option("--from", help="Target to read: a folder, hf://ORG/NAME or ms://ORG/NAME.")
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Build and check everything, publish nothing.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Move an existing tag that points at different content.")]
PassphraseFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help=f"File holding the passphrase (else ${constants.PASSPHRASE_ENV}, else derived from --source).",
    ),
]


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever `sys.stderr` is when a record is emitted, not the stream seen at start-up."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


# Ordered: subclasses before their parents, the root last.
ERROR_FORMATTERS: dict[type[Exception], Callable[[Exception], str]] = {
    errors.TagConflictError: str,
    errors.MissingDependencyError: str,
    errors.LmsynthError: str,
}


def main() -> None:
    """Console entry point: run the app and turn lmsynth errors into one line on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if constants.DEBUG else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[_StderrHandler()],
    )
    try:
        app()
    except Exception as e:  # noqa: BLE001 — mapped or re-raised below
        full = errors.disk_full(e)
        if full is not None and not constants.DEBUG:
            out.error(str(full))
            sys.exit(1)
        for cls, fmt in ERROR_FORMATTERS.items():
            if isinstance(e, cls):
                if constants.DEBUG:
                    raise
                out.error(fmt(e))
                out.info("(set LMSYNTH_DEBUG=1 for a traceback)")
                sys.exit(1)
        raise


@app.command("version")
def version_cmd() -> None:
    """Print the lmsynth version."""
    from lmsynth import __version__

    out.raw(__version__)
