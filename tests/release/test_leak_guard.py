"""The leak guard finds gated strings at any byte offset, in nested Parquet values and raw files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmsynth.errors import LeakError
from lmsynth.release.leak_guard import MIN_BYTES, GatedIndex, scan_tree


GATED = "量子コンピュータの基本原理について、初心者にも分かるように説明してください。"
OTHER = "健康的な睡眠習慣について、重要な点を三つ挙げてください。"


@pytest.fixture
def index() -> GatedIndex:
    ix = GatedIndex()
    for text in (GATED, OTHER, "hi", "Please summarize the history of the printing press for me."):
        ix.add(text)
    return ix


class TestFind:
    @pytest.mark.parametrize("pad", range(9))
    def test_found_at_every_offset(self, index: GatedIndex, pad: int) -> None:
        assert index.find(("x" * pad + "前置き" + GATED + "後書き").encode()) == GATED.encode()

    def test_partial_or_absent_strings_are_not_reported(self, index: GatedIndex) -> None:
        assert index.find(GATED[:-3].encode()) is None
        assert index.find(("まず、基本的な考え方を整理しておきましょう。" * 50).encode()) is None

    def test_short_strings_are_ignored(self, index: GatedIndex) -> None:
        assert len(index) == 3 and len("hi".encode()) < MIN_BYTES
        assert index.find(b"hi there, " * 10) is None

    def test_english_original(self, index: GatedIndex) -> None:
        text = b"The user wrote: Please summarize the history of the printing press for me. Then..."
        assert index.find(text) is not None


class TestScanTree:
    def test_nested_parquet_value_is_found_and_file_named(self, index: GatedIndex, tmp_path: Path) -> None:
        msgs = [[{"role": "assistant", "content": f"回答{i}"}] for i in range(500)]
        msgs[321][0]["content"] += GATED
        pq.write_table(pa.table({"conv": [[m] for m in msgs]}), tmp_path / "shard.parquet", compression="zstd")
        (tmp_path / "README.md").write_text("clean", encoding="utf-8")
        with pytest.raises(LeakError) as info:
            scan_tree(tmp_path, index)
        assert info.value.path == "shard.parquet" and GATED not in str(info.value)

    def test_raw_text_file_and_encrypted_files_skipped(self, index: GatedIndex, tmp_path: Path) -> None:
        (tmp_path / "x.gpg").write_text(GATED, encoding="utf-8")
        assert scan_tree(tmp_path, index) == 0
        (tmp_path / "cards").mkdir()
        (tmp_path / "cards" / "README_x.md").write_text(f"例: {OTHER}", encoding="utf-8")
        with pytest.raises(LeakError, match="cards/README_x.md"):
            scan_tree(tmp_path, index)
