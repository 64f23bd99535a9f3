"""Deterministic slices of a run, for Slurm/PBS array jobs or several independent vLLM servers.

A shard is `I/N` (1-based `I` of `N`). A conversation belongs to shard `I` when the first 8 bytes of
`sha256(conversation_id)` read as a big-endian integer are `I - 1` modulo `N`. The hash is sha256, not
Python's `hash()`, because `hash()` of a string changes from one process to the next (PYTHONHASHSEED):
array jobs on different nodes must agree on the split without talking to each other. Every id falls in
exactly one of the `N` shards, whatever the input order, so the `N` shard outputs together hold every
record once and `lmsynth gather` can check that they do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from pydantic import Field, model_validator

from lmsynth.config import StrictModel
from lmsynth.errors import ShardSpecError


T = TypeVar("T")

SHARD_OPTION = "--shard"


class ShardSpec(StrictModel):
    """Shard `index` of `count` (1-based), written `I/N` on the command line and in run.json."""

    index: int = Field(ge=1, description="1-based position of this shard.")
    count: int = Field(ge=1, description="How many shards the run is split into.")

    @model_validator(mode="after")
    def _index_within_count(self) -> ShardSpec:
        if self.index > self.count:
            raise ValueError(f"shard index {self.index} is larger than the shard count {self.count}")
        return self

    @classmethod
    def parse(cls, value: str, *, option: str = SHARD_OPTION) -> ShardSpec:
        """Parse `"I/N"`.

        Args:
            value: The text given by the user, e.g. `"2/3"`.
            option: The option or field the value came from, named in the error.

        Returns:
            The validated spec.

        Raises:
            ShardSpecError: `value` is not two integers `I/N` with `1 <= I <= N`.
        """
        parts = value.strip().split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ShardSpecError(option, value, "expected I/N with 1 <= I <= N, e.g. 2/3")
        index, count = (int(p) for p in parts)
        if count < 1:
            raise ShardSpecError(option, value, "the shard count N must be at least 1")
        if not 1 <= index <= count:
            raise ShardSpecError(option, value, f"the shard index I must be between 1 and {count}")
        return cls(index=index, count=count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        """File-name-safe form, e.g. `shard-2-of-3`."""
        return f"shard-{self.index}-of-{self.count}"


def shard_of(conversation_id: str, count: int) -> int:
    """The 1-based shard that `conversation_id` belongs to when a run is split `count` ways."""
    digest = hashlib.sha256(conversation_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def in_shard(conversation_id: str, spec: ShardSpec | None) -> bool:
    """Whether `conversation_id` belongs to `spec` (always true without a spec: the whole run)."""
    if spec is None or spec.count == 1:
        return True
    return shard_of(conversation_id, spec.count) == spec.index


def select_shard(items: Iterable[T], spec: ShardSpec | None, *, key: Callable[[T], str]) -> Iterator[T]:
    """Yield the items of `spec`, keeping their order; `key` gives an item's conversation_id."""
    for item in items:
        if in_shard(key(item), spec):
            yield item
