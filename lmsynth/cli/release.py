"""CLI commands: release."""

from __future__ import annotations

from lmsynth.cli.app import app  # noqa: F401
