"""The Typer app, shared options, the output object and the error table."""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lmsynth import constants, errors, interrupts


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

\b
Project folder: --project DIR, else $LMSYNTH_HOME, else the current folder. Its release/VERSION.yaml,
pipelines/... and cards/... are used where it has them; every other one is the copy shipped with lmsynth.
"""

app = typer.Typer(
    help=HELP, no_args_is_help=True, rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False
)


# Commands that use a Hub client in this process: huggingface_hub reads the token only from `os.environ`.
HUB_COMMANDS = frozenset({"prepare", "key", "release", "publish", "verify", "recover", "export"})

ProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        help="Project folder whose release/, pipelines/ and cards/ files win over the shipped ones "
        "(default: $LMSYNTH_HOME, else the current folder).",
        file_okay=False,
    ),
]


@app.callback()
def _root(ctx: typer.Context, project_dir: ProjectOpt = None) -> None:
    """Before any command: take the secrets out of the environment, and remove what killed commands left.

    Secrets: held in this process (`constants.hold_secrets`), so that no child process inherits them; the
    children that need one get it explicitly. Leftovers: scratch and run work folders, never a live one's;
    a killed run's work folder holds translated (gated) instructions, so any later command removes it.
    """
    from lmsynth import project
    from lmsynth.pipeline.workdir import WORK_DIR, clean_stale_work_dirs
    from lmsynth.scratch import clean_stale

    constants.hold_secrets(keep=constants.HF_TOKEN_ENVS if ctx.invoked_subcommand in HUB_COMMANDS else ())
    ctx.call_on_close(constants.restore_secrets)
    project.set_project(project_dir)
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


def os_error_line(e: Exception) -> str:
    """`<reason>: <path>` for an error of the operating system (EACCES, ELOOP, ENOENT, ENOSPC, ...)."""
    assert isinstance(e, OSError)
    reason = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"{reason}: {paths}" if paths else reason


# Ordered: subclasses before their parents, the root last; then what the operating system refused.
ERROR_FORMATTERS: dict[type[Exception], Callable[[Exception], str]] = {
    errors.TagConflictError: str,
    errors.MissingDependencyError: str,
    errors.LmsynthError: str,
    OSError: os_error_line,
}


def run() -> None:
    """Run the app (`lmsynth.cli.main` registers the commands first); lmsynth errors are one line on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if constants.DEBUG else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[_StderrHandler()],
    )
    logging.raiseExceptions = constants.DEBUG  # a log file on a full disk: not a traceback on the terminal
    interrupts.install()
    try:
        app()
    except KeyboardInterrupt:
        _interrupted(130)
    except SystemExit as e:
        if e.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # Typer turns Ctrl-C into exit status 130
            _interrupted(e.code)
        raise
    except Exception as e:  # noqa: BLE001 — mapped or re-raised below
        full = _full_disk(e)
        if full is not None and not constants.DEBUG:
            out.error(str(full))
            sys.exit(1)
        # A library that wraps an OS error (`raise X from OSError`) still gets the OS error's one line.
        wrapped = not isinstance(e, errors.LmsynthError) and isinstance(e.__cause__, OSError) and e.__cause__.errno
        shown = e.__cause__ if wrapped else e
        for cls, fmt in ERROR_FORMATTERS.items():
            if isinstance(shown, cls):
                if constants.DEBUG:
                    raise
                out.error(fmt(shown))
                out.info("(set LMSYNTH_DEBUG=1 for a traceback)")
                sys.exit(1)
        raise
    finally:
        _no_traceback_locals()


def _no_traceback_locals() -> None:
    """Undo distilabel's `rich.traceback.install(show_locals=True)`, which its `__init__` runs at import.

    That handler prints every frame's local variables with an uncaught error (prompts, gated text, keys);
    Python's own handler prints the traceback alone. Runs as the command ends, before the error reaches it.
    """
    if getattr(sys.excepthook, "__module__", "").startswith("rich."):
        sys.excepthook = sys.__excepthook__


def _full_disk(e: Exception) -> errors.DiskFullError | None:
    """The full disk behind a failed command: an ENOSPC in `e`'s chain, or a full folder it was writing.

    Libraries turn ENOSPC into other errors (a worker's failed batch, gpg's odd message), so when the
    error does not say it, the folders a command writes are checked: its `--out`/`--to`, the cache, the
    system temp folder.
    """
    from lmsynth.io import no_space_left

    found = errors.disk_full(e)
    if found is not None and found.path != errors.UNNAMED:
        return found
    args = sys.argv[1:]
    named = [
        a.split("=", 1)[1] if "=" in a else nxt
        for a, nxt in zip(args, [*args[1:], ""], strict=True)
        if a.split("=")[0] in _WRITES
    ]
    paths = [p for p in named if p and "://" not in p] + [str(constants.CACHE_DIR), tempfile.gettempdir()]
    full = next((p for p in paths if no_space_left(p)), None)
    if full is not None:
        return errors.DiskFullError(full)
    return errors.DiskFullError(paths[0]) if found is not None else None


_WRITES = ("--out", "--to")  # options naming a folder a command writes


def _interrupted(code: int) -> None:
    """Ctrl-C or SIGTERM: one line saying what the interruption left, then 130 / 143."""
    if constants.DEBUG:
        import traceback

        traceback.print_exc()
    interrupts.stop(code, out.error)


@app.command("version")
def version_cmd() -> None:
    """Print the lmsynth version."""
    from lmsynth import __version__

    out.raw(__version__)
