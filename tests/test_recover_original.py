"""`recover` on the original tokyotech-llm release layout, then `export` and TRL's data utilities on the result."""

from __future__ import annotations

import json
import re
import shutil
import signal
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from lmsynth.errors import ArgumentError, EncryptionError, InputRecordError, OutDirError, PassphraseError, SourceError
from lmsynth.export.sft_dpo import export_dpo, export_sft
from lmsynth.original import layout
from lmsynth.original.layout import detect
from lmsynth.original.models import OriginalRecoveredRecord
from lmsynth.original.recover import original_passphrase, recover_original
from lmsynth.outdir import mark
from lmsynth.recover import REPORT_FILE, iter_recovered
from tests.original_release import (
    GEMMA2_RECORDS,
    GEMMA3,
    GEMMA3_RECORDS,
    IDS,
    JA,
    KEY,
    SAMPLE,
    UNSAFE_ID,
    write_gz_lines,
    write_release,
    write_source,
)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release(
        tmp_path_factory.mktemp("orig") / "lmsys-chat-1m-synth", gemma3=GEMMA3_RECORDS, gemma2=GEMMA2_RECORDS
    )


@pytest.fixture
def source(tmp_path: Path) -> str:
    return str(write_source(tmp_path / "lmsys.jsonl"))


def recover(root: Path, source: str, out: Path, **kw: object):  # noqa: ANN201
    found = detect(str(root))
    assert found is not None
    kw.setdefault("subsets", ["gemma3"])
    return recover_original(found, source=source, out_dir=out, passphrase=kw.pop("passphrase", KEY), **kw)


def records(out: Path, subset: str = "gemma3") -> dict[str, OriginalRecoveredRecord]:
    return {r.conversation_id: r for r in iter_recovered(out / subset, OriginalRecoveredRecord)}


def copy_with(release: Path, tmp_path: Path, rel: str, rows: list[dict]) -> Path:
    """The release with one public file replaced."""
    root = tmp_path / "copy"
    shutil.copytree(release, root)
    write_gz_lines(root / rel, rows)
    return root


class TestRecover:
    def test_joins_source_ja_and_public_with_original_field_names(
        self, release: Path, source: str, tmp_path: Path
    ) -> None:
        res = recover(release, source, tmp_path / "out")
        got = records(tmp_path / "out")
        assert list(got) == IDS[:6]  # the public file's order; JA ids without responses (IDS[6:9]) are not written
        first = got[IDS[0]]
        assert first.translated_conversation[0].content == JA[IDS[0]]
        # The source's row as the authors' merge leaves it: the whole conversation and LMSYS's fields.
        assert [m.content for m in first.conversation] == [m["content"] for m in SAMPLE[0]["conversation"]]
        extra = first.model_extra or {}
        assert extra["model"] == SAMPLE[0]["model"] and extra["turn"] == SAMPLE[0]["turn"]
        assert extra["judge_model"] == "a field lmsynth does not know"  # unknown fields are kept
        assert (first.redacted, first.language) == (SAMPLE[0]["redacted"], SAMPLE[0]["language"])
        assert [a.preference_score for a in first.synthesized_response_scoring_annotations] == [7, None, 3]
        assert got[IDS[2]].is_template_instruction == "company introduction"
        assert got[IDS[3]].duplicate_user_instruction_ja == IDS[0]
        sub = res.report.subsets["gemma3"]
        assert (sub.public_rows, sub.written, sub.merged, sub.failed_scores) == (6, 6, 6, 3)
        assert sub.license.name == "Gemma Terms of Use"
        report = json.loads((tmp_path / "out" / REPORT_FILE).read_text(encoding="utf-8"))
        assert report["layout"] == "original" and report["revision"] == "v0.5"
        assert report["subsets"]["gemma3"]["failed_scores"] == 3

    def test_output_is_owner_only(self, release: Path, source: str, tmp_path: Path) -> None:
        recover(release, source, tmp_path / "out")
        for path in [tmp_path / "out", *(tmp_path / "out").rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))

    def test_multiturn_gets_the_instruction_and_english_responses_stay(
        self, release: Path, source: str, tmp_path: Path
    ) -> None:
        recover(release, source, tmp_path / "out", subsets=["gemma-2"])  # lmsynth's name for the generation
        rec = records(tmp_path / "out", "gemma2")[IDS[1]]
        conv = rec.synthesized_multiturn_conversation
        assert conv is not None and len(conv) == 1
        assert [m.content for m in conv[0]] == [JA[IDS[1]], "r1-1", "続き1", "t1"]
        assert rec.synthesized_assistant_responses_en[0].content == "en1"

    def test_include_unsafe_writes_the_flagged_instruction(self, release: Path, source: str, tmp_path: Path) -> None:
        res = recover(release, source, tmp_path / "out", include_unsafe=True)
        got = records(tmp_path / "out")
        assert list(got)[-1] == UNSAFE_ID and got[UNSAFE_ID].synthesized_assistant_responses == []
        assert res.report.subsets["gemma3"].unsafe_included == 1

    def test_several_generations_need_a_subset(self, release: Path, source: str, tmp_path: Path) -> None:
        with pytest.raises(SourceError, match=r"several generations \(gemma2, gemma3\): choose with --subset"):
            recover(release, source, tmp_path / "out", subsets=None)
        with pytest.raises(SourceError, match="no public file of subset llama3.1: expected dataset/llama3.1-"):
            recover(release, source, tmp_path / "out", subsets=["llama3.1"])
        with pytest.raises(SourceError, match="unknown subset"):
            recover(release, source, tmp_path / "out", subsets=["gemma4"])
        assert not (tmp_path / "out").exists()

    def test_llama_under_its_earlier_file_name(self, release: Path, source: str, tmp_path: Path) -> None:
        root = copy_with(release, tmp_path, "lmsys-chat-1m-synth-ja+en-llama-3.1.jsonl.gz", GEMMA3_RECORDS[:2])
        res = recover(root, source, tmp_path / "out", subsets=["llama3.1"])
        assert res.report.subsets["llama3.1"].written == 2 and res.report.revision == "v0.1"


class TestRefusals:
    def test_wrong_key_names_the_file_and_writes_nothing(self, release: Path, source: str, tmp_path: Path) -> None:
        (tmp_path / "out").mkdir()
        mark(tmp_path / "out", "recovered")  # an earlier recovery's folder, which a failed one must leave
        (tmp_path / "out" / "keep.txt").write_text("earlier output", encoding="utf-8")
        with pytest.raises(PassphraseError) as err:
            recover(release, source, tmp_path / "out", passphrase=SecretStr("not-the-key"))
        assert str(err.value) == f"the passphrase does not decrypt {layout.GATED_DEFAULT}"
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lmsynth-out.json", "keep.txt"]

    def test_no_key_says_lmsynth_cannot_derive_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(PassphraseError, match="lmsynth cannot do: pass the key you computed with --passphrase"):
            original_passphrase(None)
        monkeypatch.setenv("LMSYNTH_PASSPHRASE", "from-env")
        assert original_passphrase(None).get_secret_value() == "from-env"

    @pytest.mark.parametrize(
        ("row", "field", "message"),
        [
            (
                {
                    "synthesized_response_scoring_annotations": [
                        {"response_token_length": 1, "judgement": "j", "preference_score": 5}
                    ]
                    * 2
                },
                "synthesized_response_scoring_annotations[0].repetition_flag",
                "Field required",
            ),  # fmt: skip
            ({"empty_user_instruction_ja": "no"}, "empty_user_instruction_ja", "valid boolean"),
            (
                {
                    "synthesized_response_scoring_annotations": [
                        {
                            "response_token_length": 1,
                            "judgement": "j",
                            "repetition_flag": False,
                            "preference_score": 11,
                        }
                    ]
                    * 2
                },
                "synthesized_response_scoring_annotations[0].preference_score",
                "0-10 scale",
            ),  # fmt: skip
            (
                {"synthesized_assistant_responses": [{"role": "assistant", "content": "x"}]},
                "synthesized_response_scoring_annotations",
                "2 annotations for 1 responses",
            ),  # fmt: skip
            (
                {"synthesized_assistant_responses": [{"role": "robot", "content": "x"}] * 2},
                "synthesized_assistant_responses[0].role",
                "Input should be",
            ),  # fmt: skip
            ({"conversation_id": "not-in-the-ja-file"}, "conversation_id", "has no JA instruction"),
            ({"conversation_id": IDS[0]}, "conversation_id", "duplicate"),
        ],
        ids=[
            "missing-annotation-field",
            "string-bool",
            "off-scale",
            "not-parallel",
            "bad-role",
            "unknown-id",
            "dup-id",
        ],
    )
    def test_bad_public_line_names_file_line_and_field(
        self, release: Path, source: str, tmp_path: Path, row: dict, field: str, message: str
    ) -> None:
        bad = {**GEMMA3_RECORDS[1], **row}  # two responses, both ratings failed
        root = copy_with(release, tmp_path, f"dataset/{GEMMA3}", [GEMMA3_RECORDS[0], bad])
        with pytest.raises(InputRecordError) as err:
            recover(root, source, tmp_path / "out")
        assert (err.value.path, err.value.line, err.value.field) == (str(root / "dataset" / GEMMA3), 2, field)
        assert message in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()

    def test_missing_flag_field_in_both_files(self, release: Path, source: str, tmp_path: Path) -> None:
        bad = {k: v for k, v in GEMMA3_RECORDS[0].items() if k != "is_template_instruction"}
        root = copy_with(release, tmp_path, f"dataset/{GEMMA3}", [bad])
        with pytest.raises(InputRecordError, match=r"line 1: field `is_template_instruction`: missing"):
            recover(root, source, tmp_path / "out")

    def test_id_missing_from_the_source(self, release: Path, tmp_path: Path) -> None:
        src = tmp_path / "short.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in SAMPLE[1:]), encoding="utf-8")
        with pytest.raises(InputRecordError) as err:
            recover(release, str(src), tmp_path / "out")
        assert (err.value.line, err.value.field) == (1, "conversation_id")
        assert f"{IDS[0]!r} is not in --source {src}" in str(err.value)

    def test_public_file_that_is_not_gzip_jsonl(self, release: Path, source: str, tmp_path: Path) -> None:
        root = tmp_path / "copy"
        shutil.copytree(release, root)
        (root / "dataset" / GEMMA3).write_bytes(b"PK\x03\x04 a zip, not this layout")
        with pytest.raises(InputRecordError, match=r"gemma3-lmsys-chat-1m-synth-ja\+en.jsonl.gz: line 1: not gzipped"):
            recover(root, source, tmp_path / "out")

    def test_public_file_cut_short_or_empty(self, release: Path, source: str, tmp_path: Path) -> None:
        root = copy_with(release, tmp_path, f"dataset/{GEMMA3}", GEMMA3_RECORDS)
        public = root / "dataset" / GEMMA3
        data = public.read_bytes()
        public.write_bytes(data[: len(data) - 40])  # a download that stopped early
        with pytest.raises(InputRecordError, match=r": line \d+: cut short or damaged after line \d+"):
            recover(root, source, tmp_path / "out")
        write_gz_lines(public, [])
        with pytest.raises(InputRecordError, match="holds no records"):
            recover(root, source, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    def test_out_may_not_replace_an_input(self, release: Path, source: str, tmp_path: Path) -> None:
        for out in (release, release.parent, Path(source)):
            refused = rf"^output folder {re.escape(str(out))} .*; choose another output folder$"
            with pytest.raises(OutDirError, match=refused):
                recover(release, source, out)
        assert (release / layout.GATED_DEFAULT).is_file() and Path(source).is_file()

    def test_revision_of_a_local_copy_is_refused(self, release: Path) -> None:
        with pytest.raises(SourceError, match="a local copy has no revisions"):
            detect(str(release), revision="v0.5")

    def test_ja_file_not_this_layout(self, source: str, tmp_path: Path) -> None:
        root = write_release(tmp_path / "r", gemma3=GEMMA3_RECORDS, ja=[{"conversation_id": IDS[0], "text": "x"}])
        with pytest.raises(InputRecordError) as err:
            recover(root, source, tmp_path / "out")
        assert (err.value.path, err.value.line, err.value.field) == (
            layout.GATED_DEFAULT,
            1,
            "translated_conversation",
        )

    def test_a_folder_without_the_layout_is_not_detected(self, tmp_path: Path) -> None:
        assert detect(str(tmp_path)) is None

    def test_subset_option_on_a_lmsynth_release(self, tmp_path: Path) -> None:
        from typer.testing import CliRunner

        from lmsynth.cli.commands import app

        res = CliRunner().invoke(app, ["recover", "--from", str(tmp_path), "--subset", "gemma3"])
        assert isinstance(res.exception, ArgumentError)


class TestExport:
    @pytest.fixture(scope="class")
    def recovered(self, release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
        root = tmp_path_factory.mktemp("rec")
        out = root / "recovered"
        recover(release, str(write_source(root / "lmsys.jsonl")), out, subsets=["gemma3", "gemma2"])
        return out

    def test_sft_options_of_the_authors_converter(self, recovered: Path, tmp_path: Path) -> None:
        def kept(**kw: object) -> dict[str, int]:
            res = export_sft(recovered, out_dir=tmp_path / "sft", subsets=["gemma3"], **kw)
            return res.counts

        plain = kept()
        # r0: 7 best; r1: every rating failed (dropped); r2 template; r3 duplicate; r4; r5.
        assert plain["kept"] == 4 and plain["dropped_no_scored_response"] == 1 and plain["dropped_duplicate"] == 1
        assert kept(exclude_templates=True)["dropped_template"] == 1
        assert kept(include_failed_scores=True)["kept"] == 5
        assert kept(include_failed_scores=True, min_score=1)["dropped_below_min_score"] == 1

    def test_drop_repetitions_changes_the_best_response(self, recovered: Path, tmp_path: Path) -> None:
        from datasets import load_dataset

        def best_of_r4(**kw: object) -> str:
            out = tmp_path / f"sft-{len(kw)}"
            export_sft(recovered, out_dir=out, subsets=["gemma3"], **kw)
            ds = load_dataset(str(out), "sft", split="train", cache_dir=str(tmp_path / f"c-{len(kw)}"))
            return next(r["messages"][1]["content"] for r in ds if r["messages"][0]["content"] == JA[IDS[4]])

        assert best_of_r4() == "r4-0"
        assert best_of_r4(drop_repetitions=True) == "r4-2"

    def test_pii_exclusion_reads_the_source_flag(self, recovered: Path, tmp_path: Path) -> None:
        redacted = sum(1 for r in SAMPLE[:6] if r["redacted"] and r["conversation_id"] not in (IDS[1], IDS[3]))
        res = export_sft(recovered, out_dir=tmp_path / "sft", subsets=["gemma3"], exclude_pii=True)
        assert res.counts.get("dropped_pii", 0) == redacted

    def test_recover_export_trl(self, recovered: Path, tmp_path: Path) -> None:
        from datasets import load_dataset
        from trl.data_utils import is_conversational, maybe_extract_prompt

        export_sft(recovered, out_dir=tmp_path / "sft", subsets=["gemma2"], field="multiturn")
        export_dpo(recovered, out_dir=tmp_path / "dpo", subsets=["gemma3"])
        sft = load_dataset(str(tmp_path / "sft"), "sft", split="train", cache_dir=str(tmp_path / "c1"))
        assert all(is_conversational(r) for r in sft)
        assert [m["content"] for m in sft[0]["messages"]] == [JA[IDS[0]], "r0-1", "続き0", "t0"]
        dpo = load_dataset(str(tmp_path / "dpo"), "dpo", split="train", cache_dir=str(tmp_path / "c2"))
        pairs = {r["prompt"][0]["content"]: (r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in dpo}
        # r0: 7 vs 3 (the failed -1 is never a candidate); r1 all failed, r3 no responses, r5 a tie: no pair.
        assert pairs == {JA[IDS[0]]: ("r0-0", "r0-2"), JA[IDS[2]]: ("r2-0", "r2-1"), JA[IDS[4]]: ("r4-0", "r4-1")}
        for row in dpo:
            assert is_conversational(row) and maybe_extract_prompt(row) == row
            assert row["score_chosen"] > row["score_rejected"]

    def test_english_sft_takes_the_sources_first_user_turn(self, recovered: Path, tmp_path: Path) -> None:
        res = export_sft(recovered, out_dir=tmp_path / "sft", subsets=["gemma2"], lang="en")
        assert res.rows == {"train": 6}


class TestCli:
    def test_recover_then_export_dpo(self, release: Path, source: str, tmp_path: Path) -> None:
        from typer.testing import CliRunner

        from lmsynth.cli.commands import app

        key = tmp_path / "key.txt"
        key.write_text(KEY.get_secret_value() + "\n", encoding="utf-8")
        runner = CliRunner()
        args = ["recover", "--from", str(release), "--subset", "gemma3", "--source", source]
        res = runner.invoke(app, [*args, "--passphrase-file", str(key), "--out", str(tmp_path / "r")])
        assert res.exit_code == 0, res.output
        assert "Recovered v0.5" in res.output and "gemma3: 6 written" in res.output
        assert "3 failed scores (-1) as null" in res.output
        dpo = runner.invoke(app, ["export", "dpo", "--input", str(tmp_path / "r"), "--out", str(tmp_path / "d")])
        assert dpo.exit_code == 0, dpo.output
        assert "rows: train 3" in dpo.output


@pytest.mark.parametrize("point", ["original.decrypting@2", "original.merging@3"])
def test_a_killed_recover_leaves_nothing_the_next_command_does_not_clean(
    release: Path, tmp_path: Path, point: str
) -> None:
    from tests.release.test_kills import _leftovers, _lmsynth

    source = write_source(tmp_path / "lmsys.jsonl")
    (tmp_path / "key.txt").write_text(KEY.get_secret_value(), encoding="utf-8")
    args = ["recover", "--from", str(release), "--subset", "gemma3", "--source", str(source)]
    args += ["--passphrase-file", str(tmp_path / "key.txt"), "--out", str(tmp_path / "r")]
    killed = _lmsynth(tmp_path, *args, kill_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _leftovers(tmp_path)["scratch"], "the kill point was not reached"
    assert not (tmp_path / "r").exists()
    assert _lmsynth(tmp_path, "version").returncode == 0
    assert _leftovers(tmp_path) == {"scratch": [], "systmp": [], "agents": []}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.")]  # the half-built output too
    done = _lmsynth(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert len(records(tmp_path / "r")) == 6


def test_wrong_key_file_is_one_line_on_stderr(
    release: Path, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmsynth.cli import main

    secret = tmp_path / "key.txt"
    secret.write_text("planted-wrong-secret\n", encoding="utf-8")
    argv = ["lmsynth", "recover", "--from", str(release), "--subset", "gemma3", "--source", source]
    monkeypatch.setattr("sys.argv", [*argv, "--passphrase-file", str(secret), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"Error: the passphrase does not decrypt {layout.GATED_DEFAULT}"
    assert "planted-wrong-secret" not in "\n".join(err)
    assert not (tmp_path / "r").exists()


class TestDecryptStream:
    def test_round_trip_and_the_secret_stays_out_of_gpgs_argv_and_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import io
        import subprocess

        from lmsynth.crypto import decrypt_stream, encrypt_file

        plain = tmp_path / "p.bin"
        plain.write_bytes(b"line\n" * 100_000)
        encrypt_file(plain, tmp_path / "p.gpg", passphrase=KEY)
        monkeypatch.setenv("LMSYNTH_PASSPHRASE", KEY.get_secret_value())  # the child must not inherit it
        seen: list[tuple[list[str], dict[str, str]]] = []
        real = subprocess.Popen

        def spy(args: list[str], **kw: object) -> subprocess.Popen:
            seen.append((list(args), dict(kw.get("env") or {})))
            return real(args, **kw)

        monkeypatch.setattr(subprocess, "Popen", spy)
        with open(tmp_path / "p.gpg", "rb") as f, decrypt_stream(f, passphrase=KEY, name="p.gpg") as out:
            got = out.read()
        assert got == plain.read_bytes()
        (args, env), secret = seen[0], KEY.get_secret_value()
        assert args[0] == "gpg" and env and secret not in " ".join(args) and secret not in " ".join(env.values())
        assert "LMSYNTH_PASSPHRASE" not in env and env["GNUPGHOME"] and env["LC_ALL"] == "C"
        with pytest.raises(EncryptionError, match="^x.gpg: not an OpenPGP file$"):
            with decrypt_stream(io.BytesIO(b"not openpgp" * 10), passphrase=KEY, name="x.gpg") as out:
                out.read()
