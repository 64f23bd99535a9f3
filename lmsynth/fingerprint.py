"""Content fingerprints for pipeline stages and runs: what counts as "the same work".

Identity is the canonical JSON of a config (`model_dump(mode="json")`, sorted keys, no whitespace, no
`default=`), minus the fields in `EXCLUDED_FIELDS`, which change how work is scheduled but not what a model
writes. Prompts enter by their text, not their path. `None` and `[]` are collapsed so adding an optional field
with an empty default does not invalidate old caches. `FINGERPRINT_VERSION` is stored with every hash; bump
it when this definition changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


FINGERPRINT_VERSION = 1

# Fields that never change outputs, by name at any depth, each with its reason.
EXCLUDED_FIELDS: dict[str, str] = {
    "batch_size": "rows per distilabel batch: grouping only (cache units are keyed by their rows)",
    "description": "prose",
    "max_concurrency": "parallel requests to a server",
    "batch_requests": "how requests are grouped on the wire",
    "max_retries": "retry policy",
    "backoff_s": "retry policy",
    "timeout_s": "request timeout",
    "base_urls": "which servers host the model (the model id and revision identify it)",
    "max_num_seqs": "engine scheduling",
    "max_num_batched_tokens": "engine scheduling",
    "gpu_memory_utilization": "engine memory sizing",
    "kv_cache_memory_bytes": "engine memory sizing",
    "enforce_eager": "CUDA graphs or not: same sampling",
    "tensor_parallel_size": "how the model is split across devices",
    "offline": "whether the engine may reach a hub",
    "cpu_threads": "engine scheduling (threads of a CPU engine)",
    "sleep_s": "fake backend pacing (tests)",
    "call_log": "fake backend call log (tests)",
    "limit": "changes the input rows, which the input digest covers",
}


def fingerprint(config: BaseModel | dict[str, Any], *, input_digest: str | None, extra: dict | None = None) -> str:
    """sha256 over the canonical identity of `config` (+ `extra`, e.g. prompt texts) and the input digest.

    Args:
        config: a config model or its JSON-mode dict.
        input_digest: digest of the input rows (`digest_rows`); None for per-stage folders whose units carry
            their own row digests.
        extra: more identity that is not a config field (prompt texts, model revisions resolved at run time).

    Returns:
        A 64-character hex digest.
    """
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    payload = {
        "version": FINGERPRINT_VERSION,
        "config": _strip(data),
        "extra": _strip(extra or {}),
        "input": input_digest,
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def digest_rows(rows: Iterable[Any]) -> str:
    """sha256 over canonical JSON lines of `rows` (dicts or models), in order."""
    h = hashlib.sha256()
    for row in rows:
        data = row.model_dump(mode="json") if isinstance(row, BaseModel) else row
        h.update(canonical_json(data).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def canonical_json(data: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept; no `default=`, so a non-JSON value is an error, not a str()."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _strip(value: Any) -> Any:
    """Drop excluded and empty fields, recursively."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in EXCLUDED_FIELDS:
                continue
            v = _strip(v)
            if v is None or v == [] or v == {}:
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
