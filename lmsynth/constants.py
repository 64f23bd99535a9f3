"""The only module that reads environment variables; everything else imports from here."""

from __future__ import annotations

import os
from pathlib import Path

from lmsynth.resources import bundled_root


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


# The shipped declarative files (pipelines/, release/, cards/), found with importlib.resources: in the
# wheel, or in the checkout of an editable install. A user's project folder (`--project`, LMSYNTH_HOME, else
# the current folder) overrides them file by file: `lmsynth.project`.
PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = bundled_root()
PIPELINES_DIR = BUNDLED_DIR / "pipelines"
RELEASE_DIR = BUNDLED_DIR / "release"
CARDS_DIR = BUNDLED_DIR / "cards"
HOME_ENV = "LMSYNTH_HOME"
LMSYNTH_HOME = Path(os.environ[HOME_ENV]) if os.environ.get(HOME_ENV) else None

# The bundled sample source (LMSYS-Chat-1M schema, written by the project) and the template rules.
SAMPLE_SOURCE = PACKAGE_DIR / "sample" / "lmsys_sample.jsonl"
TEMPLATE_RULES = PACKAGE_DIR / "sample" / "template_rules.yaml"

# Working folders.
CACHE_DIR = Path(os.environ.get("LMSYNTH_CACHE", Path.home() / ".cache" / "lmsynth"))

# Secrets: read here, wrapped in SecretStr by lmsynth.passphrase, never logged.
PASSPHRASE_ENV = "LMSYNTH_PASSPHRASE"
DEBUG = _is_true(os.environ.get("LMSYNTH_DEBUG"))


OPENAI_API_KEY_ENV = "OPENAI_API_KEY"

# Tests only: the named kill point (`lmsynth.faults`) at which a command SIGKILLs itself.
KILL_AT_ENV = "LMSYNTH_KILL_AT"


def kill_at() -> str | None:
    """The kill point named by `LMSYNTH_KILL_AT` (read at call time), or None."""
    return os.environ.get(KILL_AT_ENV) or None


def openai_api_key_from_env() -> str | None:
    """The key for OpenAI-compatible servers (`backend: openai`), when they require one."""
    return os.environ.get(OPENAI_API_KEY_ENV) or None


def passphrase_from_env() -> str | None:
    """The passphrase from `LMSYNTH_PASSPHRASE`, read at call time so tests can set it."""
    return os.environ.get(PASSPHRASE_ENV) or None


# Hubs. huggingface_hub resolves its own token (HF_TOKEN, saved login, OIDC via HF_OIDC_RESOURCE) and
# endpoint (HF_ENDPOINT); ModelScope's are read here, at call time, so tests can set them.
MODELSCOPE_TOKEN_ENV = "MODELSCOPE_API_TOKEN"
MODELSCOPE_ENDPOINT_ENV = "MODELSCOPE_ENDPOINT"
HF_TOKEN_ENV = "HF_TOKEN"
HUB_RETRIES_ENV = "LMSYNTH_HUB_RETRIES"
HUB_RETRY_BASE_ENV = "LMSYNTH_HUB_RETRY_BASE_S"


def modelscope_token_from_env() -> str | None:
    """The ModelScope token from `MODELSCOPE_API_TOKEN`, read at call time."""
    return os.environ.get(MODELSCOPE_TOKEN_ENV) or None


def modelscope_endpoint() -> str | None:
    """The ModelScope endpoint from `MODELSCOPE_ENDPOINT` (None: the client's default service)."""
    return os.environ.get(MODELSCOPE_ENDPOINT_ENV) or None


def hub_retry_settings() -> tuple[int, float]:
    """`(attempts, base delay in seconds)` for hub calls: `LMSYNTH_HUB_RETRIES`, `LMSYNTH_HUB_RETRY_BASE_S`."""
    attempts = int(os.environ.get(HUB_RETRIES_ENV) or 5)
    base = float(os.environ.get(HUB_RETRY_BASE_ENV) or 1.0)
    return max(attempts, 1), max(base, 0.0)


def secret_values_from_env() -> list[str]:
    """Every secret this process may hold in its environment, so messages can be scrubbed of them."""
    names = (PASSPHRASE_ENV, MODELSCOPE_TOKEN_ENV, HF_TOKEN_ENV, "HUGGING_FACE_HUB_TOKEN")
    return [v for v in (os.environ.get(n) for n in names) if v]
