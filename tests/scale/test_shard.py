"""Shard specs and the stable split of conversation ids."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmsynth.errors import ShardSpecError
from lmsynth.pipeline.shard import ShardSpec, in_shard, select_shard, shard_of
from lmsynth.testing import conversation_id_for


IDS = [conversation_id_for(7, i) for i in range(500)] + ["a", "b", "", "日本語のid"]


class TestParse:
    def test_parses_i_of_n(self) -> None:
        spec = ShardSpec.parse("2/3")
        assert (spec.index, spec.count) == (2, 3)
        assert str(spec) == "2/3"
        assert spec.label == "shard-2-of-3"

    def test_whitespace_is_tolerated(self) -> None:
        assert ShardSpec.parse(" 1 / 1 ") == ShardSpec(index=1, count=1)

    @pytest.mark.parametrize("value", ["0/3", "4/3", "3", "a/b", "1/0", "-1/3", "1/2/3", ""])
    def test_bad_values_name_the_option(self, value: str) -> None:
        with pytest.raises(ShardSpecError) as err:
            ShardSpec.parse(value)
        assert str(err.value).startswith(f"`--shard` {value!r}:")
        assert err.value.option == "--shard"
        assert "\n" not in str(err.value)

    def test_out_of_range_says_the_range(self) -> None:
        with pytest.raises(ShardSpecError, match="between 1 and 3"):
            ShardSpec.parse("4/3")

    def test_model_rejects_index_above_count(self) -> None:
        with pytest.raises(ValueError, match="larger than the shard count"):
            ShardSpec(index=5, count=4)


class TestSplit:
    @pytest.mark.parametrize("count", [1, 2, 3, 7])
    def test_shards_partition_any_id_set(self, count: int) -> None:
        members = [{i for i in IDS if in_shard(i, ShardSpec(index=k, count=count))} for k in range(1, count + 1)]
        assert set().union(*members) == set(IDS)
        assert sum(len(m) for m in members) == len(set(IDS))

    def test_split_is_roughly_even(self) -> None:
        sizes = [sum(shard_of(i, 3) == k for i in IDS[:500]) for k in (1, 2, 3)]
        assert all(120 <= s <= 215 for s in sizes), sizes

    def test_no_spec_means_everything(self) -> None:
        assert all(in_shard(i, None) for i in IDS)

    def test_known_value_is_sha256_based(self) -> None:
        # sha256("a") starts with ca978112ca1bbdca: read big-endian, mod 3 → shard.
        assert shard_of("a", 3) == int("ca978112ca1bbdca", 16) % 3 + 1

    def test_stable_across_processes(self) -> None:
        code = (
            "from lmsynth.pipeline.shard import shard_of;"
            "from lmsynth.testing import conversation_id_for;"
            "print(''.join(str(shard_of(conversation_id_for(7, i), 5)) for i in range(200)))"
        )
        runs = {
            subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONHASHSEED": s},
            ).stdout
            for s in ("1", "2", "3")
        }
        assert runs == {"".join(str(shard_of(conversation_id_for(7, i), 5)) for i in range(200)) + "\n"}

    def test_select_keeps_order(self) -> None:
        spec = ShardSpec(index=2, count=3)
        picked = list(select_shard(IDS, spec, key=lambda x: x))
        assert picked == [i for i in IDS if shard_of(i, 3) == 2]
