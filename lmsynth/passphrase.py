"""Where the passphrase of the gated files comes from: a file, the environment, or the source itself.

Order: `--passphrase-file` > `LMSYNTH_PASSPHRASE` > derived from the source (`lmsynth-key-v1`). Never from
argv, where other users of the machine can read it. The value is a `SecretStr` from here on and becomes a
plain string only at the call into GnuPG; no error, log record or repr carries it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import SecretStr

from lmsynth import constants
from lmsynth.errors import PassphraseError


logger = logging.getLogger(__name__)


def resolve_passphrase(
    *, passphrase_file: Path | None, source: str | None, token: SecretStr | None = None
) -> SecretStr:
    """The passphrase, from the first place that has one.

    Args:
        passphrase_file: file holding the passphrase; one trailing newline is stripped.
        source: source to derive the key from when neither the file nor `LMSYNTH_PASSPHRASE` is given
            (pass `str(constants.SAMPLE_SOURCE)` for the bundled sample); None: do not derive.
        token: hub token when `source` is a gated hub dataset.

    Returns:
        The passphrase.

    Raises:
        PassphraseError: the file cannot be read or is empty, or no passphrase is available at all.
        InputRecordError, SourceError: deriving from `source` failed.
    """
    if passphrase_file is not None:
        logger.debug("passphrase from file %s", passphrase_file)
        return SecretStr(read_passphrase_file(passphrase_file))
    env = constants.passphrase_from_env()
    if env is not None:
        logger.debug("passphrase from $%s", constants.PASSPHRASE_ENV)
        return SecretStr(env)
    if source is not None:
        from lmsynth.key import derive_key

        logger.debug("passphrase derived from source %s", source)
        return derive_key(source, token=token)
    raise PassphraseError(
        f"no passphrase: pass --passphrase-file, set ${constants.PASSPHRASE_ENV}, or give --source to derive it"
    )


def read_passphrase_file(path: Path) -> str:
    r"""The content of a passphrase file without one trailing newline (`\n` or `\r\n`).

    Raises:
        PassphraseError: the file cannot be read, is not UTF-8, or holds an empty passphrase; names the file.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PassphraseError(f"{path}: cannot read passphrase file: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise PassphraseError(f"{path}: passphrase file is not UTF-8 text") from None
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            text = text[: -len(ending)]
            break
    if not text:
        raise PassphraseError(f"{path}: passphrase file is empty")
    return text
