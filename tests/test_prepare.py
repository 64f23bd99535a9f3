"""`prepare`: language filter, unsafe set, PII, templates, counters, atomic output, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmsynth import constants
from lmsynth.cli.commands import app
from lmsynth.errors import ArgumentError, ConfigError, InputRecordError
from lmsynth.io import read_jsonl
from lmsynth.outdir import MARKER_FILE
from lmsynth.prepare import (
    PREPARED_MARKER,
    PREPARED_STATS,
    PrepareStats,
    is_prepared,
    prepare,
    read_stats,
)
from lmsynth.records import PREPARED_INSTRUCTIONS, PREPARED_UNSAFE, InstructionRecord
from lmsynth.source import open_source
from tests.test_source import make_row, upload_dataset, write_rows


def flagged_row(cid: str, text: str, **kw: object) -> dict:
    row = make_row(cid, text, **kw)
    row["openai_moderation"][0]["flagged"] = True
    row["openai_moderation"][0]["categories"]["violence"] = True
    return row


def small_source(tmp_path: Path) -> Path:
    no_user = make_row("e" * 32)
    no_user["conversation"] = [{"content": "Hello! How can I help?", "role": "assistant"}]
    no_user["openai_moderation"] = no_user["openai_moderation"][:1]
    return write_rows(
        tmp_path / "src.jsonl",
        [
            make_row("a" * 32, "Give me an introduction over 200 words for Acme, a chemical company in Kobe"),
            make_row("b" * 32, "Wie geht es dir?", language="German"),
            flagged_row("c" * 32, "Write a gory fight scene"),
            make_row("d" * 32, "NAME_1さんへの手紙を書いて", language="Japanese", redacted=True),
            no_user,
            make_row("f" * 32, " "),
        ],
    )


class TestPrepare:
    def test_routes_each_row(self, tmp_path: Path) -> None:
        res = prepare(str(small_source(tmp_path)), out_dir=tmp_path / "out")
        kept = list(read_jsonl(res.instructions_path, InstructionRecord))
        unsafe = list(read_jsonl(res.unsafe_path, InstructionRecord))
        assert [r.conversation_id[0] for r in kept] == ["a", "d", "f"]  # source order
        assert kept[0].is_template_instruction == "company introduction"
        assert (
            kept[1].redacted and kept[1].language == "Japanese" and kept[1].instruction == "NAME_1さんへの手紙を書いて"
        )
        assert kept[2].instruction == " "  # near-empty instructions stay; the pipelines mark them
        assert [(r.conversation_id[0], r.flagged, r.instruction) for r in unsafe] == [
            ("c", True, "Write a gory fight scene")
        ]
        assert not any(r.flagged for r in kept)

    def test_counts(self, tmp_path: Path) -> None:
        s = prepare(str(small_source(tmp_path)), out_dir=tmp_path / "out").stats
        assert (s.total, s.kept, s.unsafe, s.pii) == (6, 3, 1, 1)
        assert s.dropped == {"language": 1, "empty_source": 1}
        assert s.templates["company introduction"] == 1 and s.templates_kept["company introduction"] == 1
        assert set(s.templates) == set(s.templates_kept) and sum(s.templates.values()) == 1
        assert s.per_language == {"English": 3, "Japanese": 1}
        assert s.source_fingerprint == open_source(str(tmp_path / "src.jsonl")).fingerprint()

    def test_writes_stats_and_marker(self, tmp_path: Path) -> None:
        res = prepare(str(small_source(tmp_path)), out_dir=tmp_path / "out")
        assert sorted(p.name for p in res.out_dir.iterdir()) == sorted(
            [PREPARED_INSTRUCTIONS, PREPARED_UNSAFE, PREPARED_STATS, PREPARED_MARKER, MARKER_FILE]
        )
        assert is_prepared(res.out_dir)
        assert read_stats(res.out_dir) == res.stats
        assert PrepareStats.model_validate(json.loads((res.out_dir / PREPARED_STATS).read_text())) == res.stats

    def test_languages_option(self, tmp_path: Path) -> None:
        s = prepare(str(small_source(tmp_path)), out_dir=tmp_path / "out", languages=["German"]).stats
        assert (s.kept, s.unsafe, s.dropped["language"]) == (1, 0, 5)

    def test_rules_option(self, tmp_path: Path) -> None:
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules:\n  - type: letter\n    pattern: '手紙'\n", encoding="utf-8")
        res = prepare(str(small_source(tmp_path)), out_dir=tmp_path / "out", rules_path=rules)
        assert res.stats.templates == {"letter": 1}
        kept = list(read_jsonl(res.instructions_path, InstructionRecord))
        assert [r.is_template_instruction for r in kept] == [None, "letter", None]

    def test_bundled_sample(self, tmp_path: Path) -> None:
        s = prepare(None, out_dir=tmp_path / "out").stats
        assert s.total == sum(1 for _ in open_source(None))
        assert s.total == s.kept + s.unsafe + sum(s.dropped.values())
        assert s.kept >= 150 and s.unsafe >= 10 and s.pii >= 10
        assert s.dropped["language"] > 0 and s.dropped["empty_source"] == 2
        assert all(n > 0 for n in s.templates.values())
        assert s.source == str(constants.SAMPLE_SOURCE)

    def test_empty_languages_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ArgumentError) as exc:
            prepare(None, out_dir=tmp_path / "out", languages=[" ", ""])
        assert str(exc.value) == "`languages` must name at least one language, e.g. Japanese,English"


@pytest.mark.hub
@pytest.mark.usefixtures("hf_hub")
def test_prepare_streams_a_hub_dataset(tmp_path: Path) -> None:
    from pydantic import SecretStr

    rows = [json.loads(ln) for ln in small_source(tmp_path).read_text(encoding="utf-8").splitlines()]
    upload_dataset(tmp_path, "org/lmsys-like", rows)
    res = prepare("org/lmsys-like", out_dir=tmp_path / "out", token=SecretStr("hf_test_write_token_123456"))
    local = prepare(str(tmp_path / "src.jsonl"), out_dir=tmp_path / "out-local")
    assert res.instructions_path.read_bytes() == local.instructions_path.read_bytes()
    assert res.stats.model_dump(exclude={"source", "source_fingerprint"}) == local.stats.model_dump(
        exclude={"source", "source_fingerprint"}
    )
    assert res.stats.source == "org/lmsys-like"


class TestAtomicOutput:
    def test_failure_midway_leaves_nothing(self, tmp_path: Path) -> None:
        rows: list[dict | str] = [make_row(f"{i:032x}") for i in range(100)]
        rows[60] = '{"conversation_id": "oops"'
        src = write_rows(tmp_path / "src" / "s.jsonl", rows)
        work = tmp_path / "work"
        work.mkdir()
        with pytest.raises(InputRecordError, match=r": line 61: not valid JSON"):
            prepare(str(src), out_dir=work / "out")
        assert list(work.iterdir()) == []

    def test_failure_keeps_the_previous_output(self, tmp_path: Path) -> None:
        out = tmp_path / "out"
        first = prepare(str(small_source(tmp_path)), out_dir=out)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        dup = write_rows(tmp_path / "dup.jsonl", [make_row("a" * 32), make_row("a" * 32)])
        with pytest.raises(InputRecordError, match="duplicate conversation_id"):
            prepare(str(dup), out_dir=out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.jsonl", "out", "src.jsonl"]
        assert first.stats.total == 6

    def test_bad_rules_fail_before_anything_is_written(self, tmp_path: Path) -> None:
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules:\n  - type: x\n    pattern: '['\n")
        with pytest.raises(ConfigError, match=r"`rules\[0\]\.pattern`"):
            prepare(None, out_dir=tmp_path / "out", rules_path=rules)
        assert not (tmp_path / "out").exists()

    def test_rerun_replaces_the_output(self, tmp_path: Path) -> None:
        out = tmp_path / "out"
        prepare(None, out_dir=out)
        res = prepare(str(small_source(tmp_path)), out_dir=out)
        assert res.stats.total == 6 and read_stats(out).total == 6


class TestCli:
    def test_prepare_prints_counts_per_rule(self, tmp_path: Path) -> None:
        res = CliRunner().invoke(
            app, ["prepare", "--source", str(small_source(tmp_path)), "--out", str(tmp_path / "o")]
        )
        assert res.exit_code == 0, res.output
        assert "Prepared" in res.stdout
        for line in ("total: 6", "kept: 3", "unsafe: 1", "pii: 1", "dropped language: 1", "dropped empty_source: 1",
                     "template 'company introduction': 1", "template 'text completion': 0"):  # fmt: skip
            assert f"  {line}\n" in res.stdout
        assert is_prepared(tmp_path / "o")

    def test_prepare_languages_and_rules_options(self, tmp_path: Path) -> None:
        rules = tmp_path / "rules.yaml"
        rules.write_text("rules:\n  - type: greeting\n    pattern: '^Wie'\n")
        args = ["prepare", "--source", str(small_source(tmp_path)), "--out", str(tmp_path / "o")]
        res = CliRunner().invoke(app, [*args, "--languages", "German,English", "--rules", str(rules)])
        assert res.exit_code == 0, res.output
        assert "  template 'greeting': 1\n" in res.stdout and "  kept: 3\n" in res.stdout

    def test_prepare_bad_input_is_one_line(self, tmp_path: Path) -> None:
        import subprocess
        import sys

        bad = make_row("a" * 32)
        del bad["turn"]
        src = write_rows(tmp_path / "s.jsonl", [bad])
        res = subprocess.run(
            [sys.executable, "-m", "lmsynth", "prepare", "--source", str(src), "--out", str(tmp_path / "o")],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 1
        assert res.stderr.splitlines()[0] == f"Error: {src}: line 1: field `turn`: Field required"
        assert not (tmp_path / "o").exists()
