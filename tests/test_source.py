"""Reading LMSYS-Chat-1M-schema sources: formats, one-line errors, duplicates, fingerprints, the bundled sample."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.errors import InputRecordError, InputRowError, SourceError
from lmsynth.records import MODERATION_CATEGORIES, SourceConversation
from lmsynth.source import open_source


def make_row(cid: str = "0" * 32, text: str = "How do I sort a list in Python?", **overrides: object) -> dict:
    """One LMSYS-schema row; `overrides` replace top-level fields."""
    moderation = {
        "categories": {c: False for c in MODERATION_CATEGORIES},
        "category_scores": {c: 0.0001 for c in MODERATION_CATEGORIES},
        "flagged": False,
    }
    row = {
        "conversation_id": cid,
        "model": "vicuna-13b",
        "conversation": [{"content": text, "role": "user"}, {"content": "Use sorted().", "role": "assistant"}],
        "turn": 1,
        "language": "English",
        "openai_moderation": [moderation, copy.deepcopy(moderation)],
        "redacted": False,
    }
    row.update(overrides)
    return row


def write_rows(path: Path, rows: list[dict | str]) -> Path:
    """Write rows (dicts as JSON, strings verbatim) as JSON Lines; gzip when the name ends in `.gz`."""
    text = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def ids(src: str | None) -> list[str]:
    return [c.conversation_id for c in open_source(src)]


def one_line_error(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


class TestOpenSource:
    def test_none_is_the_bundled_sample(self) -> None:
        src = open_source(None)
        assert src.files == (constants.SAMPLE_SOURCE,)
        assert sum(1 for _ in src) == sum(1 for ln in constants.SAMPLE_SOURCE.read_text().splitlines() if ln)

    def test_jsonl_rows_validate_into_source_conversations(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "a.jsonl", [make_row("a" * 32), "", make_row("b" * 32, text="Hi there")])
        rows = list(open_source(str(p)).rows())
        assert [(r.conversation.conversation_id, r.line) for r in rows] == [("a" * 32, 1), ("b" * 32, 3)]
        assert isinstance(rows[1].conversation, SourceConversation)
        assert rows[1].conversation.first_user_content == "Hi there"
        assert rows[0].path == str(p)

    def test_jsonl_gz_reads_like_jsonl(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "a.jsonl.gz", [make_row("a" * 32), make_row("b" * 32)])
        assert ids(str(p)) == ["a" * 32, "b" * 32]

    def test_parquet_reads_like_jsonl(self, tmp_path: Path) -> None:
        p = write_parquet(tmp_path / "a.parquet", [make_row("a" * 32), make_row("b" * 32, text="Zwei")])
        conv = list(open_source(str(p)))
        assert [c.conversation_id for c in conv] == ["a" * 32, "b" * 32]
        assert conv[1].first_user_content == "Zwei"
        assert conv[0].openai_moderation[0].category_scores["violence"] == pytest.approx(0.0001)

    def test_folder_reads_every_format_in_path_order_and_skips_hidden(self, tmp_path: Path) -> None:
        write_rows(tmp_path / "b.jsonl", [make_row("2" * 32)])
        write_parquet(tmp_path / "a.parquet", [make_row("1" * 32)])
        write_rows(tmp_path / "c" / "d.jsonl.gz", [make_row("3" * 32)])
        write_rows(tmp_path / ".cache" / "x.jsonl", [make_row("9" * 32)])
        (tmp_path / "notes.txt").write_text("not a source")
        assert ids(str(tmp_path)) == ["1" * 32, "2" * 32, "3" * 32]

    def test_missing_path_is_a_source_error(self, tmp_path: Path) -> None:
        with pytest.raises(SourceError) as exc:
            open_source(str(tmp_path / "nope.jsonl"))
        hint = "(and not a hub dataset id like `lmsys/lmsys-chat-1m`)"
        assert one_line_error(exc) == f"{tmp_path / 'nope.jsonl'}: no such file or folder {hint}"

    def test_relative_missing_file_is_not_taken_for_a_hub_id(self) -> None:
        with pytest.raises(SourceError, match="no such file"):
            open_source("exports/train.jsonl")

    def test_owner_name_is_a_hub_dataset(self) -> None:
        src = open_source("lmsys/lmsys-chat-1m")
        assert src.is_hub and src.hub_id == "lmsys/lmsys-chat-1m"

    def test_unknown_suffix_is_refused(self, tmp_path: Path) -> None:
        p = tmp_path / "a.csv"
        p.write_text("x")
        with pytest.raises(SourceError, match=r"unknown source format; expected one of \.jsonl, \.jsonl\.gz"):
            open_source(str(p))

    def test_folder_without_source_files_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "readme.txt").write_text("x")
        with pytest.raises(SourceError) as exc:
            open_source(str(tmp_path))
        assert one_line_error(exc) == f"{tmp_path}: folder holds no source files (.jsonl, .jsonl.gz, .parquet)"

    def test_token_stays_out_of_repr(self) -> None:
        from pydantic import SecretStr

        src = open_source("org/gated", token=SecretStr("hf_planted_token_xyz"))
        assert "hf_planted_token_xyz" not in repr(src)


class TestBadInput:
    def test_malformed_json_names_file_and_line(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "s.jsonl", [make_row("a" * 32), '{"conversation_id": "b", "model": '])
        with pytest.raises(InputRecordError) as exc:
            ids(str(p))
        assert one_line_error(exc).startswith(f"{p}: line 2: not valid JSON (")
        assert (exc.value.path, exc.value.line, exc.value.field) == (str(p), 2, None)

    def test_missing_field_names_file_line_and_field(self, tmp_path: Path) -> None:
        bad = make_row("b" * 32)
        del bad["language"]
        p = write_rows(tmp_path / "s.jsonl", [make_row("a" * 32), make_row("c" * 32), bad])
        with pytest.raises(InputRecordError) as exc:
            ids(str(p))
        assert one_line_error(exc) == f"{p}: line 3: field `language`: Field required"

    def test_nested_field_is_named_by_its_path(self, tmp_path: Path) -> None:
        bad = make_row("b" * 32)
        bad["conversation"][1]["content"] = None
        p = write_rows(tmp_path / "s.jsonl", [bad])
        with pytest.raises(InputRecordError) as exc:
            ids(str(p))
        assert one_line_error(exc) == f"{p}: line 1: field `conversation[1].content`: Input should be a valid string"

    def test_duplicate_id_names_both_lines(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "s.jsonl", [make_row("a" * 32), make_row("b" * 32), make_row("a" * 32, text="x")])
        with pytest.raises(InputRecordError) as exc:
            ids(str(p))
        assert one_line_error(exc) == (
            f"{p}: line 3: field `conversation_id`: duplicate conversation_id '{'a' * 32}'; first seen at {p}: line 1"
        )

    def test_duplicate_across_files_of_a_folder(self, tmp_path: Path) -> None:
        a = write_parquet(tmp_path / "a.parquet", [make_row("x" * 32), make_row("y" * 32)])
        b = write_rows(tmp_path / "b.jsonl", [make_row("z" * 32), make_row("y" * 32)])
        with pytest.raises(InputRecordError) as exc:
            ids(str(tmp_path))
        assert one_line_error(exc) == (
            f"{b}: line 2: field `conversation_id`: duplicate conversation_id '{'y' * 32}'; first seen at {a}: row 2"
        )

    def test_parquet_errors_name_the_row(self, tmp_path: Path) -> None:
        bad = make_row("b" * 32, turn=0)
        p = write_parquet(tmp_path / "s.parquet", [make_row("a" * 32), bad])
        with pytest.raises(InputRowError) as exc:
            ids(str(p))
        assert one_line_error(exc) == f"{p}: row 2: field `turn`: Input should be greater than or equal to 1"
        assert isinstance(exc.value, InputRecordError) and exc.value.line == 2

    def test_invalid_utf8_names_the_line(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "s.jsonl", [make_row("a" * 32)])
        with open(p, "ab") as f:
            f.write(b'{"conversation_id": "\xff\xfe"}\n')
        with pytest.raises(InputRecordError) as exc:
            ids(str(p))
        assert one_line_error(exc) == f"{p}: line 2: not valid UTF-8 (invalid start byte)"

    def test_corrupt_gzip_is_a_source_error(self, tmp_path: Path) -> None:
        p = tmp_path / "s.jsonl.gz"
        p.write_bytes(b"this is not gzip at all\n")
        with pytest.raises(SourceError) as exc:
            ids(str(p))
        assert one_line_error(exc).startswith(f"{p}: cannot read after line 0: ")

    def test_truncated_gzip_is_a_source_error(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "s.jsonl.gz", [make_row(f"{i:032x}") for i in range(50)])
        p.write_bytes(p.read_bytes()[:-40])
        with pytest.raises(SourceError, match=rf"^{re.escape(str(p))}: cannot read after line \d+: "):
            ids(str(p))

    def test_corrupt_parquet_is_a_source_error(self, tmp_path: Path) -> None:
        p = tmp_path / "s.parquet"
        p.write_bytes(b"PAR1 broken")
        with pytest.raises(SourceError) as exc:
            ids(str(p))
        assert one_line_error(exc).startswith(f"{p}: cannot read Parquet after row 0: ")

    def test_unreadable_file_is_a_source_error(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "s.jsonl", [make_row()])
        src = open_source(str(p))
        p.unlink()  # gone between opening and reading
        with pytest.raises(SourceError) as exc:
            list(src)
        assert one_line_error(exc) == f"{p}: cannot read: No such file or directory"


class TestFingerprint:
    def test_is_stable_and_ignores_mtime(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "s.jsonl", [make_row("a" * 32)])
        before = open_source(str(p)).fingerprint()
        os.utime(p, (1, 1))
        assert open_source(str(p)).fingerprint() == before
        assert re.fullmatch(r"[0-9a-f]{64}", before)

    def test_changes_with_content(self, tmp_path: Path) -> None:
        p = write_rows(tmp_path / "s.jsonl", [make_row("a" * 32)])
        before = open_source(str(p)).fingerprint()
        write_rows(p, [make_row("a" * 32, text="changed")])
        assert open_source(str(p)).fingerprint() != before

    def test_is_neither_the_key_nor_the_plain_file_hash(self, tmp_path: Path) -> None:
        from lmsynth.key import derive_key

        p = write_rows(tmp_path / "s.jsonl", [make_row("a" * 32)])
        fp = open_source(str(p)).fingerprint()
        assert fp != derive_key(str(p)).get_secret_value()
        assert fp != hashlib.sha256(p.read_bytes()).hexdigest()

    def test_folder_fingerprint_depends_on_file_names(self, tmp_path: Path) -> None:
        write_rows(tmp_path / "a" / "x.jsonl", [make_row("a" * 32)])
        write_rows(tmp_path / "b" / "y.jsonl", [make_row("a" * 32)])
        assert open_source(str(tmp_path / "a")).fingerprint() != open_source(str(tmp_path / "b")).fingerprint()


@pytest.mark.hub
@pytest.mark.usefixtures("hf_hub")
class TestHubSource:
    """A hub dataset streamed through the real `datasets` client from the local Hub stand-in."""

    def test_streams_rows_with_row_numbers(self, tmp_path: Path) -> None:
        from pydantic import SecretStr

        upload_dataset(tmp_path, "org/chat", [make_row("a" * 32), make_row("b" * 32, text="second")])
        src = open_source("org/chat", token=SecretStr("hf_test_write_token_123456"))
        rows = list(src.rows())
        assert [(r.conversation.conversation_id, r.path, r.line) for r in rows] == [
            ("a" * 32, "org/chat", 1),
            ("b" * 32, "org/chat", 2),
        ]
        assert rows[1].conversation.first_user_content == "second"
        assert re.fullmatch(r"[0-9a-f]{64}", src.fingerprint())

    def test_bad_row_names_dataset_row_and_field(self, tmp_path: Path) -> None:
        bad = make_row("b" * 32, redacted="maybe")
        upload_dataset(tmp_path, "org/bad", [make_row("a" * 32), bad])
        with pytest.raises(InputRowError) as exc:
            ids("org/bad")
        assert one_line_error(exc) == "org/bad: row 2: field `redacted`: Input should be a valid boolean"

    def test_missing_dataset_is_one_line_without_the_token(self) -> None:
        from pydantic import SecretStr

        token = SecretStr("hf_planted_secret_987")
        with pytest.raises(SourceError) as exc:
            list(open_source("org/absent", token=token))
        msg = one_line_error(exc)
        assert msg.startswith("org/absent: cannot open hub dataset: ")
        assert "hf_planted_secret_987" not in msg


class TestBundledSample:
    """The sample covers every feature the pipelines and the release must handle."""

    @pytest.fixture(scope="class")
    def rows(self) -> list[SourceConversation]:
        return list(open_source(None))

    def test_size_and_lmsys_shaped_ids(self, rows: list[SourceConversation]) -> None:
        assert len(rows) >= 240
        assert all(re.fullmatch(r"[0-9a-f]{32}", r.conversation_id) for r in rows)

    def test_languages(self, rows: list[SourceConversation]) -> None:
        langs = Counter(r.language for r in rows)
        assert langs["English"] > len(rows) / 2
        assert langs["Japanese"] >= 20
        assert {"Chinese", "German", "Spanish", "Portuguese"} <= set(langs)

    def test_multi_turn(self, rows: list[SourceConversation]) -> None:
        multi = [r for r in rows if r.turn > 1]
        assert len(multi) >= 10
        assert all(sum(m.role == "user" for m in r.conversation) == r.turn for r in multi)

    def test_moderation_has_eleven_categories_and_flags(self, rows: list[SourceConversation]) -> None:
        assert all(len(r.openai_moderation) == len(r.conversation) for r in rows)
        assert all(
            set(m.categories) == set(MODERATION_CATEGORIES) == set(m.category_scores)
            for r in rows
            for m in r.openai_moderation
        )
        flagged = [r for r in rows if r.flagged]
        assert len(flagged) >= 10
        assert {r.language for r in flagged} >= {"English", "Japanese"}

    def test_redacted_with_name_placeholders(self, rows: list[SourceConversation]) -> None:
        redacted = [r for r in rows if r.redacted]
        assert len(redacted) >= 10
        assert all(re.search(r"NAME_\d", r.first_user_content) for r in redacted)

    def test_every_template_family_appears(self, rows: list[SourceConversation]) -> None:
        from lmsynth.templates import load_rules

        rules = load_rules()
        found = Counter(rules.match(r.first_user_content) for r in rows)
        for family in rules.types:
            assert found[family] >= 5, family
        assert any(r.first_user_content.startswith("Give me an introduction over 200 words for ") for r in rows)

    def test_exact_duplicates_and_near_empty_instructions(self, rows: list[SourceConversation]) -> None:
        firsts = Counter(r.first_user_content for r in rows if any(m.role == "user" for m in r.conversation))
        duplicated = [t for t, n in firsts.items() if n > 1 and t.strip() and len(t) > 3]
        assert len(duplicated) >= 3
        assert {"", " ", "?", "hi"} <= set(firsts)

    def test_everyday_english_instructions_are_distinct_and_long_enough(self, rows: list[SourceConversation]) -> None:
        from lmsynth.templates import load_rules

        rules = load_rules()
        everyday = {
            r.first_user_content
            for r in rows
            if r.language == "English"
            and not r.redacted
            and not r.flagged
            and rules.match(r.first_user_content) is None
        }
        assert len([t for t in everyday if len(t) >= 30]) >= 50

    def test_rows_without_a_user_turn(self, rows: list[SourceConversation]) -> None:
        assert any(all(m.role != "user" for m in r.conversation) for r in rows)

    def test_sample_is_the_generator_output(self, tmp_path: Path) -> None:
        import subprocess

        root = Path(__file__).resolve().parent.parent
        out = tmp_path / "sample.jsonl"
        subprocess.run(
            [sys.executable, str(root / "scripts" / "make_sample.py"), str(out)], check=True, capture_output=True
        )
        assert out.read_bytes() == constants.SAMPLE_SOURCE.read_bytes()

    def test_readme_says_it_is_synthetic(self) -> None:
        text = (constants.SAMPLE_SOURCE.parent / "README.md").read_text()
        assert "synthetic" in text.lower() and "LMSYS-Chat-1M" in text


# Private helpers


def upload_dataset(tmp_path: Path, repo_id: str, rows: list[dict]) -> None:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token="hf_test_write_token_123456")
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    local = write_rows(tmp_path / repo_id.replace("/", "_") / "train.jsonl", rows)
    api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[CommitOperationAdd(path_in_repo="data/train.jsonl", path_or_fileobj=str(local))],
        commit_message="data",
    )
