"""The `lmsynth` command line: a thin shell over the library verbs (the commands: `lmsynth.cli.commands`).

Importing this package changes nothing in the process: multiprocessing's spawn and forkserver children
re-import the `lmsynth` script that started their parent, and a SIGTERM handler installed by that import
would keep `Pool.terminate` from ending them. `main` installs the interrupt handling, then imports.
"""

from lmsynth import interrupts


def main() -> None:
    """Console entry point: Ctrl-C or SIGTERM while the commands are imported is the same one line."""
    with interrupts.starting():
        from lmsynth.cli.app import run
        from lmsynth.cli.commands import app  # noqa: F401  (registers every command)
    run()


__all__ = ["main"]
