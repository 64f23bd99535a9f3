"""The only module that reads environment variables; everything else imports from here."""

from __future__ import annotations

import os
from pathlib import Path


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


# Where the project's declarative files live (pipelines/, release/, cards/). The package is installed
# editable from the repository, so they sit next to it; LMSYNTH_HOME points elsewhere when needed.
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = Path(os.environ.get("LMSYNTH_HOME", PACKAGE_DIR.parent))
PIPELINES_DIR = PROJECT_ROOT / "pipelines"
RELEASE_DIR = PROJECT_ROOT / "release"
CARDS_DIR = PROJECT_ROOT / "cards"

# The bundled sample source (LMSYS-Chat-1M schema, written by the project) and the template rules.
SAMPLE_SOURCE = PACKAGE_DIR / "sample" / "lmsys_sample.jsonl"
TEMPLATE_RULES = PACKAGE_DIR / "sample" / "template_rules.yaml"

# Working folders.
CACHE_DIR = Path(os.environ.get("LMSYNTH_CACHE", Path.home() / ".cache" / "lmsynth"))

# Secrets: read here, wrapped in SecretStr by lmsynth.secrets, never logged.
PASSPHRASE_ENV = "LMSYNTH_PASSPHRASE"
DEBUG = _is_true(os.environ.get("LMSYNTH_DEBUG"))


def passphrase_from_env() -> str | None:
    """The passphrase from `LMSYNTH_PASSPHRASE`, read at call time so tests can set it."""
    return os.environ.get(PASSPHRASE_ENV) or None
