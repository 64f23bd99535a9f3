"""The only module that reads environment variables; everything else imports from here.

It is also the one place that changes this process's environment: `hold_secrets` takes the secrets out at
a command's start (so no child process inherits them), `child_env` builds the explicit environment of every
child lmsynth starts (holding only the secrets that child needs), and `set_for_frameworks` sets what a
framework reads only from `os.environ`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
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

# Engines (`lmsynth.pipeline.engines`): how long a vLLM server may take to answer, and its log level.
ENGINE_START_TIMEOUT_S = float(os.environ.get("LMSYNTH_ENGINE_START_TIMEOUT_S") or 1800)
ENGINE_LOG_LEVEL = os.environ.get("LMSYNTH_ENGINE_LOG_LEVEL") or "INFO"

# Tests only: the named kill point (`lmsynth.faults`) at which a command SIGKILLs itself.
KILL_AT_ENV = "LMSYNTH_KILL_AT"


def kill_at() -> str | None:
    """The kill point named by `LMSYNTH_KILL_AT` (read at call time), or None."""
    return os.environ.get(KILL_AT_ENV) or None


def openai_api_key_from_env() -> str | None:
    """The key for OpenAI-compatible servers (`backend: openai`), when they require one."""
    return secret(OPENAI_API_KEY_ENV)


def passphrase_from_env() -> str | None:
    """The passphrase from `LMSYNTH_PASSPHRASE` (held since the command started, or read now)."""
    return secret(PASSPHRASE_ENV)


# Hubs. huggingface_hub resolves its own token (HF_TOKEN, saved login, OIDC via HF_OIDC_RESOURCE) and
# endpoint (HF_ENDPOINT); ModelScope's are read here, at call time, so tests can set them.
MODELSCOPE_TOKEN_ENV = "MODELSCOPE_API_TOKEN"
MODELSCOPE_ENDPOINT_ENV = "MODELSCOPE_ENDPOINT"
HF_TOKEN_ENV = "HF_TOKEN"
HF_TOKEN_ENVS = (HF_TOKEN_ENV, "HUGGING_FACE_HUB_TOKEN")
HUB_RETRIES_ENV = "LMSYNTH_HUB_RETRIES"
HUB_RETRY_BASE_ENV = "LMSYNTH_HUB_RETRY_BASE_S"


def modelscope_token_from_env() -> str | None:
    """The ModelScope token from `MODELSCOPE_API_TOKEN` (held since the command started, or read now)."""
    return secret(MODELSCOPE_TOKEN_ENV)


def modelscope_endpoint() -> str | None:
    """The ModelScope endpoint from `MODELSCOPE_ENDPOINT` (None: the client's default service)."""
    return os.environ.get(MODELSCOPE_ENDPOINT_ENV) or None


def hub_retry_settings() -> tuple[int, float]:
    """`(attempts, base delay in seconds)` for hub calls: `LMSYNTH_HUB_RETRIES`, `LMSYNTH_HUB_RETRY_BASE_S`."""
    attempts = int(os.environ.get(HUB_RETRIES_ENV) or 5)
    base = float(os.environ.get(HUB_RETRY_BASE_ENV) or 1.0)
    return max(attempts, 1), max(base, 0.0)


def secret_values_from_env() -> list[str]:
    """Every secret this process may hold (in its environment or held), so messages can be scrubbed of them."""
    return [v for v in (secret(n) for n in SECRET_ENVS) if v]


# ---------------------------------------------------------------------------
# Secrets and the environments of child processes
# ---------------------------------------------------------------------------

# Every environment variable that holds a secret. A child process inherits its parent's environment (and
# multiprocessing's children, distilabel's workers, the forkserver and Ray's processes all start from
# `os.environ`), so the CLI takes these out of `os.environ` before anything starts (`hold_secrets`) and
# keeps them here for the code that needs them.
SECRET_ENVS = (PASSPHRASE_ENV, *HF_TOKEN_ENVS, MODELSCOPE_TOKEN_ENV, OPENAI_API_KEY_ENV)
_held: dict[str, str] = {}


def secret(name: str) -> str | None:
    """The secret `name`: held since the command started, else from the environment now (library callers)."""
    return _held.get(name) or os.environ.get(name) or None


def hold_secrets(*, keep: Iterable[str] = ()) -> None:
    """Take every secret but `keep` out of `os.environ` and hold it in this process only.

    `keep` is for frameworks that read a secret only from this process's `os.environ`: huggingface_hub
    resolves `HF_TOKEN` there, so commands that use a Hub client in-process keep it (their children still
    get none: `child_env`).
    """
    names = [n for n in SECRET_ENVS if n not in keep]
    _blank_in_process_environ({n for n in names if n in os.environ})
    for name in names:
        value = os.environ.pop(name, None)
        if value:
            _held[name] = value


def _blank_in_process_environ(names: set[str]) -> None:
    """Overwrite the values of `names` in the C environment block with NULs, before they are unset.

    Unsetting a variable only drops its pointer: the string stays in the block the process started
    with, which `/proc/<pid>/environ` shows, and which every child forked without `exec` (and every child
    between its fork and its `exec`) carries. Linux with glibc or musl; elsewhere nothing to do.
    """
    if not names or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        block = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    except (OSError, ValueError):
        return
    prefixes = {f"{n}=".encode() for n in names}
    i = 0
    while block[i]:
        entry = ctypes.string_at(block[i])
        prefix = next((p for p in prefixes if entry.startswith(p)), None)
        if prefix is not None:
            ctypes.memset(block[i] + len(prefix), 0, len(entry) - len(prefix))
        i += 1


def restore_secrets() -> None:
    """Put the held secrets back into `os.environ` once a command is over.

    For callers that run several commands in one process (tests, library use): each finds the environment
    as the caller left it. The command's child processes are all gone by then.
    """
    while _held:
        name, value = _held.popitem()
        os.environ.setdefault(name, value)


def child_env(*, secrets: Iterable[str] = (), **settings: str) -> dict[str, str]:
    """The environment of a child process lmsynth starts: this one's without any secret, plus `settings`.

    Args:
        secrets: the names of the secrets this child needs (e.g. `HF_TOKEN_ENVS` for a model download).
        settings: variables to set for the child.
    """
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVS}
    for name in secrets:
        value = secret(name)
        if value:
            env[name] = value
    env.update(settings)
    return env


def set_for_frameworks(settings: Mapping[str, str], *, override: bool = False) -> None:
    """Set variables that a framework reads only from `os.environ` (in this process or its own workers).

    distilabel starts its step processes, vLLM its in-process engine, and Ray its cluster from this
    process's environment, with no way to pass one: their settings (log levels, no usage reporting, no
    hub downloads) can only go there. `override=False` leaves what the user set.
    """
    for name, value in settings.items():
        if override:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)
