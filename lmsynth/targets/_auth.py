"""Credentials of the hubs, kept out of every message: private to the targets.

The clients resolve their own tokens on every call (huggingface_hub: GitHub OIDC when `HF_OIDC_RESOURCE`
is set, then `HF_TOKEN`, then the saved login; ModelScope: `MODELSCOPE_API_TOKEN`, read in
`modelscope.get_modelscope_api`), so lmsynth never holds one; what it must do is scrub them from the
errors and logs it writes.
"""

from __future__ import annotations

from pydantic import SecretStr

from lmsynth import constants


def redact(text: str, *secrets: SecretStr | str | None) -> str:
    """`text` with every given secret, and every secret in the environment, replaced by `***`."""
    values = [s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets]
    for value in sorted({v for v in [*values, *constants.secret_values_from_env()] if v}, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text
