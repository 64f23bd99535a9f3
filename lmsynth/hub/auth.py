"""Credentials for the hubs: resolved by the clients' own rules, kept as `SecretStr`, scrubbed from text.

Hugging Face: huggingface_hub resolves the token itself on every call (GitHub OIDC when
`HF_OIDC_RESOURCE` is set, then `HF_TOKEN`, then the saved login), so lmsynth never handles it except to
tell whether one exists. ModelScope: `MODELSCOPE_API_TOKEN`, handed to the client only at the call.
"""

from __future__ import annotations

from pydantic import SecretStr

from lmsynth import constants


def hf_token() -> SecretStr | None:
    """The token huggingface_hub would send, or None when it has none."""
    from huggingface_hub import get_token

    token = get_token()
    return SecretStr(token) if token else None


def modelscope_token() -> SecretStr | None:
    """The ModelScope token from `MODELSCOPE_API_TOKEN`, or None."""
    token = constants.modelscope_token_from_env()
    return SecretStr(token) if token else None


def redact(text: str, *secrets: SecretStr | str | None) -> str:
    """`text` with every given secret, and every secret in the environment, replaced by `***`."""
    values = [s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets]
    for value in sorted({v for v in [*values, *constants.secret_values_from_env()] if v}, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text
