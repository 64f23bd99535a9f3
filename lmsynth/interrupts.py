"""What a command says when Ctrl-C or SIGTERM stops it: one line, from the code that knows what was left.

The CLI turns Ctrl-C (`KeyboardInterrupt`) and SIGTERM (`SystemExit(143)`, see `on_sigterm`) into this line
and exit status 130 / 143, after every `finally` of the command has run (servers, workers and scratch
folders gone). Code whose interruption leaves something a user must know sets it with `note`: a publish
says whether its tag was written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import NoReturn


DEFAULT = "interrupted; nothing was left running"
_note = DEFAULT


def note(message: str) -> None:
    """The line to print if the command is interrupted from now on."""
    global _note
    _note = message


def message() -> str:
    """The line for an interruption now."""
    return _note


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C does (every `finally` runs) and exit 143."""
    raise SystemExit(128 + signum)


on_sigterm.lmsynth_run = True  # type: ignore[attr-defined]  # forked children get the default action back


def install() -> None:
    """Make SIGTERM unwind the command (before the command runs; only the main thread can set handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """The CLI's imports: Ctrl-C or SIGTERM there (seconds of them) is the same one line, not a traceback."""
    install()
    try:
        yield
    except KeyboardInterrupt:
        stop(128 + signal.SIGINT)
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            stop(e.code)
        raise


def stop(code: int, say: Callable[[str], None] | None = None) -> NoReturn:
    """Say the line (`Error: <line>` on stderr unless `say` is given) and exit `code`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting prints no traceback
    if say is None:
        sys.stderr.write(f"Error: {message()}\n")
    else:
        say(message())
    sys.exit(code)


def _default_sigterm_in_child() -> None:
    if getattr(signal.getsignal(signal.SIGTERM), "lmsynth_run", False):
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_sigterm_in_child)
