"""`lmsynth-key-v1`: the exact scheme, order independence, the external sort, and `lmsynth key`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.key import derive_key, key_digest, sorted_pairs
from tests.test_source import make_row, write_rows


def three_rows() -> list[dict]:
    """Three rows in shuffled order; one starts with an assistant message, one is Japanese."""
    greeting = make_row("a9", text="ignored: not the first message")
    greeting["conversation"] = [
        {"content": "welcome", "role": "assistant"},
        {"content": "ignored: not the first message", "role": "user"},
    ]
    return [make_row("b2", text="What is 2+2?"), greeting, make_row("B7", text="日本語で答えて")]


class TestScheme:
    def test_hand_computed_three_rows(self, tmp_path: Path) -> None:
        src = write_rows(tmp_path / "s.jsonl", three_rows())
        # Plain string order: "B7" < "a9" < "b2" (code points: B=0x42, a=0x61, b=0x62).
        expected = hashlib.sha256(
            b"B7\x1f" + "日本語で答えて".encode() + b"\x1e" + b"a9\x1fwelcome\x1e" + b"b2\x1fWhat is 2+2?\x1e"
        ).hexdigest()
        assert derive_key(str(src)).get_secret_value() == expected

    def test_key_is_lowercase_hex_in_a_secret(self) -> None:
        key = derive_key(None)
        assert key.get_secret_value() == key.get_secret_value().lower() and len(key.get_secret_value()) == 64
        assert key.get_secret_value() not in repr(key) and key.get_secret_value() not in str(key)

    def test_row_order_in_the_source_does_not_matter(self, tmp_path: Path) -> None:
        lines = constants.SAMPLE_SOURCE.read_text(encoding="utf-8").splitlines()
        shuffled = tmp_path / "reversed.jsonl"
        shuffled.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
        assert derive_key(str(shuffled)).get_secret_value() == derive_key(None).get_secret_value()

    def test_every_row_counts_whatever_its_language(self, tmp_path: Path) -> None:
        rows = [json.loads(ln) for ln in constants.SAMPLE_SOURCE.read_text(encoding="utf-8").splitlines()]
        german = next(i for i, r in enumerate(rows) if r["language"] == "German")
        without = write_rows(tmp_path / "s.jsonl", rows[:german] + rows[german + 1 :])
        assert derive_key(str(without)).get_secret_value() != derive_key(None).get_secret_value()

    def test_only_the_first_message_counts(self, tmp_path: Path) -> None:
        base = derive_key(str(write_rows(tmp_path / "a.jsonl", three_rows()))).get_secret_value()
        rows = three_rows()
        rows[0]["conversation"][1]["content"] = "a different answer"
        assert derive_key(str(write_rows(tmp_path / "b.jsonl", rows))).get_secret_value() == base
        rows[0]["conversation"][0]["content"] = "What is 2+3?"
        assert derive_key(str(write_rows(tmp_path / "c.jsonl", rows))).get_secret_value() != base

    def test_separators_keep_boundaries_apart(self) -> None:
        assert key_digest([("ab", "c")]) != key_digest([("a", "bc")])
        assert key_digest([("a", "b"), ("c", "d")]) != key_digest([("a", "b"), ("c", "e")])
        assert key_digest([]) == hashlib.sha256(b"").hexdigest()


class TestExternalSort:
    def test_chunked_path_equals_in_memory_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import lmsynth.key as key_mod

        spilled: list[int] = []
        real_spill = key_mod._spill
        monkeypatch.setattr(
            key_mod, "_spill", lambda chunk, path: spilled.append(len(chunk)) or real_spill(chunk, path)
        )
        in_memory = derive_key(None, chunk_rows=10**9).get_secret_value()
        assert spilled == []
        spill_dir = tmp_path / "spill"
        spill_dir.mkdir()
        chunked = derive_key(None, chunk_rows=7, tmp_dir=spill_dir).get_secret_value()
        assert chunked == in_memory
        assert len(spilled) >= 30 and max(spilled) == 7
        assert list(spill_dir.iterdir()) == []  # spill files are removed

    def test_sorted_pairs_matches_sorted(self) -> None:
        import random

        rng = random.Random(7)
        pairs = [(f"{rng.getrandbits(40):x}", "é" * rng.randint(0, 3)) for _ in range(1000)]
        for chunk_rows in (1, 3, 999, 1000, 1001):
            assert list(sorted_pairs(pairs, chunk_rows=chunk_rows)) == sorted(pairs)

    def test_hand_computed_digest_through_spills(self) -> None:
        pairs = [("b2", "What is 2+2?"), ("a9", "welcome"), ("B7", "日本語で答えて")]
        expected = hashlib.sha256(
            b"B7\x1f" + "日本語で答えて".encode() + b"\x1e" + b"a9\x1fwelcome\x1e" + b"b2\x1fWhat is 2+2?\x1e"
        ).hexdigest()
        assert key_digest(pairs, chunk_rows=1) == key_digest(pairs) == expected


class TestKeyCommand:
    def test_prints_the_key_and_nothing_else_on_stdout(self, tmp_path: Path) -> None:
        src = write_rows(tmp_path / "s.jsonl", three_rows())
        res = subprocess.run(
            [sys.executable, "-m", "lmsynth", "key", "--source", str(src)], capture_output=True, text=True, check=True
        )
        assert res.stdout == derive_key(str(src)).get_secret_value() + "\n"

    def test_bad_source_is_one_line_on_stderr(self, tmp_path: Path) -> None:
        src = write_rows(tmp_path / "s.jsonl", [make_row("a" * 32), "{broken"])
        res = subprocess.run(
            [sys.executable, "-m", "lmsynth", "key", "--source", str(src)], capture_output=True, text=True
        )
        assert res.returncode == 1 and res.stdout == ""
        assert res.stderr.splitlines()[0].startswith(f"Error: {src}: line 2: not valid JSON")
