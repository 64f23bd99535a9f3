"""Retries of hub calls (the policy of `lmsynth.retry`), and the mapping of hub failures to one-line errors.

Private to the targets. Transient failures (429, 5xx, 412 "the branch moved", network errors) are retried;
every attempt of a publish step re-reads the remote state first, so a retry after a lost response never
commits twice.
Whatever is left becomes a `TargetError` subclass whose message says what to do:

| failure                    | error               | what the message tells the user               |
|----------------------------|---------------------|-----------------------------------------------|
| 401 / 403                  | `HubAuthError`      | set a token with write access                 |
| 404 repo                   | `TargetError`       | check the repo name and the token's access    |
| 429 / 5xx after retries    | `HubRateLimitError` | wait and rerun; a rerun completes the release |
| network                    | `TargetError`       | check the endpoint / connection               |
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from lmsynth import constants
from lmsynth.errors import HubAuthError, HubRateLimitError, LmsynthError, TargetError
from lmsynth.retry import RetryPolicy
from lmsynth.targets._auth import redact


log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 412, 429, 500, 502, 503, 504})


def policy_from_env() -> RetryPolicy:
    """The hubs' policy, set by `LMSYNTH_HUB_RETRIES` / `LMSYNTH_HUB_RETRY_BASE_S` (defaults: 5 tries, 1 s)."""
    attempts, base = constants.hub_retry_settings()
    return RetryPolicy(attempts=attempts, base_delay_s=base)


def with_retries(fn: Callable[[], T], *, target: str, action: str, policy: RetryPolicy) -> T:
    """Call `fn` until it succeeds, retrying transient hub failures with backoff.

    Args:
        fn: the step; it must be safe to repeat (re-read remote state before writing).
        target: the target URI, named in errors.
        action: what the step does ("commit the release"), named in errors.
        policy: attempts and delays.

    Returns:
        What `fn` returned.

    Raises:
        TargetError: (or a subclass) the step failed for good; one line, no secrets.
    """

    def on_retry(e: Exception, attempt: int, wait: float) -> None:
        log.warning(
            "%s: %s failed (%s); retry %d/%d in %.1fs",
            target,
            action,
            _short(e, http_status(e)),
            attempt,
            policy.attempts - 1,
            wait,
        )

    try:
        return policy.call(fn, retryable=is_transient, on_retry=on_retry)
    except LmsynthError:
        raise
    except Exception as e:  # noqa: BLE001 — every client error is mapped below
        # Only a transient failure is retried, so a transient last one is the last of all the tries.
        attempts = policy.attempts if is_transient(e) else 1
        raise hub_error(e, target=target, action=action, attempts=attempts) from e


def is_transient(e: Exception) -> bool:
    """Whether a failed hub call is worth another try: 408/412/429/5xx or a network error, never our own error."""
    if isinstance(e, LmsynthError):
        return False
    status = http_status(e)
    return status in TRANSIENT_STATUS if status is not None else is_network_error(e)


def hub_error(e: BaseException, *, target: str, action: str, attempts: int = 1) -> TargetError:
    """The one-line lmsynth error for a failed hub call (never holding a token)."""
    status = http_status(e)
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    action = f"{action} ({url})" if (url := request_url(e)) else action
    if status in (401, 403):
        msg = (
            f"cannot {action}: the hub refused the credentials (HTTP {status}); use a token with write access "
            "(HF_TOKEN, `hf auth login` or HF_OIDC_RESOURCE in CI; MODELSCOPE_API_TOKEN for ModelScope)"
        )
        return HubAuthError(target, redact(msg))
    if status == 404:
        msg = (
            f"cannot {action}: repository or revision not found (HTTP 404); check the name, and that the token "
            "can see the repo"
        )
        return TargetError(target, redact(msg))
    if status == 429:
        msg = f"cannot {action}: rate limited by the hub (HTTP 429){tries}; wait a few minutes and rerun"
        return HubRateLimitError(target, msg)
    if status is not None and status >= 500:
        msg = (
            f"cannot {action}: the hub kept failing (HTTP {status}){tries}; rerun later, a release without its "
            "tag is completed by a rerun"
        )
        return HubRateLimitError(target, msg)
    if status == 412:
        return TargetError(target, f"cannot {action}: the branch kept moving during the upload{tries}; rerun")
    if status is None and is_network_error(e):
        return TargetError(target, redact(f"cannot {action}: the hub is unreachable{tries} ({_short(e, None)})"))
    return TargetError(target, redact(f"cannot {action}: {_short(e, status)}"))


def http_status(e: BaseException) -> int | None:
    """The HTTP status behind `e` or any exception it wraps, if there is one."""
    for cur in _chain(e):
        response = getattr(cur, "response", None)
        status = getattr(response, "status_code", None) or getattr(cur, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def request_url(e: BaseException) -> str | None:
    """`METHOD URL` of the request behind `e` or what it wraps (no query string: it may carry a token)."""
    for cur in _chain(e):
        for holder in (getattr(cur, "response", None), cur):
            try:
                request = getattr(holder, "request", None)
            except RuntimeError:  # httpx: an error raised outside a request has none
                request = None
            url = getattr(request, "url", None)
            if url is not None:
                return f"{getattr(request, 'method', 'GET')} {str(url).split('?')[0]}"
    return None


def is_network_error(e: BaseException) -> bool:
    """Whether `e` (or what it wraps) is a connection / timeout failure rather than an answer."""
    return any(
        isinstance(cur, (ConnectionError, TimeoutError)) or type(cur).__name__ in _NETWORK_ERROR_NAMES
        for cur in _chain(e)
    )


# Private helpers


def _chain(e: BaseException) -> Iterator[BaseException]:
    """`e`, then what it was raised from or during, each once (a chain can loop)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


# httpx/httpx2 (huggingface_hub), requests (modelscope) and modelscope_hub network errors, by name: matching
# names keeps this module free of the clients' imports.
_NETWORK_ERROR_NAMES = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "ReadError",
        "WriteError",
        "RemoteProtocolError",
        "NetworkError",
        "TransportError",
        "TimeoutException",
        "ConnectionError",
        "ChunkedEncodingError",
        "RequestTimeoutError",
    }
)


def _short(e: BaseException, status: int | None) -> str:
    """The first line of `e`, without secrets; prefixed by its HTTP status."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = redact(text)[:300]
    return f"HTTP {status}: {text}" if status is not None else text
