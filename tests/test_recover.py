"""recover: checksums before decryption, wrong key → one line and nothing written, missing source rows counted.

The release trees here are built by hand in the layout of `lmsynth.tree.layout` (real Parquet, real
GnuPG, a real MANIFEST.json model) so each guarantee is tested on exactly the bytes it is about.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr

from lmsynth.crypto import encrypt_file
from lmsynth.errors import ChecksumError, ExportError, PassphraseError
from lmsynth.io import sha256_file
from lmsynth.recover import REPORT_FILE, RecoveredRecord, iter_recovered, recover
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import ChecksumManifest


KEY = SecretStr("correct horse battery staple")
CONFIG = "gemma3"


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def public(cid: str, scores: list[float | None], *, multiturn: bool = False) -> dict:
    """A public row (no gated text; a multiturn conversation with its first user turn blanked)."""
    row = {
        "conversation_id": cid,
        "duplicate_user_instruction_ja": None,
        "empty_user_instruction_ja": False,
        "is_template_instruction": None,
        "synthesized_assistant_responses": [msg("assistant", f"{cid}-r{i}") for i in range(len(scores))],
        "synthesized_response_scoring_annotations": [
            {"response_token_length": 5, "judgement": "j", "repetition_flag": False, "preference_score": s}
            for s in scores
        ],
        "synthesized_assistant_responses_en": None,
        "synthesized_multiturn_conversation": None,
    }
    if multiturn:
        row["synthesized_multiturn_conversation"] = [
            [msg("user", ""), msg("assistant", f"{cid}-r0"), msg("user", "次は？"), msg("assistant", f"{cid}-t2")]
        ]
    return row


def source_row(cid: str, text: str, *, redacted: bool = False, language: str = "English") -> dict:
    return {
        "conversation_id": cid,
        "model": "vicuna-13b",
        "conversation": [msg("user", text), msg("assistant", "old answer")],
        "turn": 1,
        "language": language,
        "openai_moderation": [{"categories": {}, "category_scores": {}, "flagged": False}] * 2,
        "redacted": redacted,
    }


PUBLIC = [public("c2", [3, 7]), public("c1", [5, None], multiturn=True), public("c3", [1])]
GATED = {"c1": "質問一", "c2": "質問二", "c3": "質問三"}  # sorted by id in the file
UNSAFE = {"c0": "危険な質問"}  # moderation-flagged: only in the +unsafe file, no public row
SOURCE = [
    source_row("c3", "Question three"),
    source_row("c1", "Question one", redacted=True),
    source_row("c2", "Question two", language="Japanese"),
    source_row("c0", "Unsafe question"),
    source_row("zz", "Not in the release"),
]


def build_tree(root: Path, *, passphrase: SecretStr = KEY) -> Path:
    """A release tree: one subset with public Parquet, both gated files and a MANIFEST.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = root / layout.shard_path(CONFIG, 0, 1)
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(PUBLIC), shard)
    gated_files = {}
    for name, rows in (("default", GATED), ("unsafe", {**GATED, **UNSAFE})):
        plain = root / f"{name}.jsonl.gz"
        with gzip.open(plain, "wt", encoding="utf-8") as f:
            for cid in sorted(rows):
                f.write(
                    json.dumps({"conversation_id": cid, "translated_conversation": [msg("user", rows[cid])]}) + "\n"
                )
        rel = layout.gated_path(CONFIG, unsafe=name == "unsafe")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        encrypt_file(plain, root / rel, passphrase=passphrase)
        plain.unlink()
        gated_files[name] = rel
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
    license = {"id": "other", "name": "Gemma Terms of Use", "link": "https://ai.google.dev/gemma/terms", "notice": "n"}
    manifest = ChecksumManifest.model_validate(
        {
            "version": "v0.5",
            "tool_version": "0.1.0",
            "subsets": {
                CONFIG: {
                    "title": "Gemma 3",
                    "generator": {
                        "id": "google/gemma-3-27b-it",
                        "link": "https://huggingface.co/google/gemma-3-27b-it",
                    },
                    "judge": {"id": "google/gemma-3-27b-it", "link": "https://huggingface.co/google/gemma-3-27b-it"},
                    "license": license,
                    "counts": {
                        "records": 3,
                        "instructions_ja": 3,
                        "responses_ja": 5,
                        "gated_default": 3,
                        "gated_unsafe": 4,
                    },
                    "shards": [layout.shard_path(CONFIG, 0, 1)],
                    "gated": gated_files,
                }
            },
            "files": files,
        }
    )
    (root / layout.MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return root


class FolderTarget:
    """A target whose `download` copies a prepared tree (the git-backed LocalTarget has its own tests)."""

    def __init__(self, tree: Path) -> None:
        self.uri = str(tree)
        self.tree = tree

    def download(self, tag: str, dest: Path) -> Path:
        assert tag == "v0.5"
        shutil.copytree(self.tree, dest)
        return dest


@pytest.fixture(scope="module")
def built_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tree(tmp_path_factory.mktemp("built") / "release")


@pytest.fixture()
def tree(built_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tree = Path(shutil.copytree(built_tree, tmp_path / "release"))
    import lmsynth.targets.registry as registry

    monkeypatch.setattr(registry, "open_target", lambda uri: FolderTarget(Path(uri)))
    return tree


@pytest.fixture()
def source(tmp_path: Path) -> str:
    path = tmp_path / "lmsys.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SOURCE), encoding="utf-8")
    return str(path)


def run(tree: Path, source: str, out: Path, **kw) -> object:
    kw.setdefault("passphrase", KEY)
    return recover(str(tree), revision="v0.5", source=source, out_dir=out, **kw)


class TestRecover:
    def test_merges_public_gated_and_source(self, tree: Path, source: str, tmp_path: Path) -> None:
        res = run(tree, source, tmp_path / "out")
        recs = {r.conversation_id: r for r in iter_recovered(tmp_path / "out" / CONFIG)}
        assert list(recs) == ["c2", "c1", "c3"]  # public order
        c1 = recs["c1"]
        assert c1.translated_conversation[0].content == "質問一"
        assert c1.conversation[0].content == "Question one"
        assert c1.redacted is True and c1.language == "English"
        # The blank first user turn of the public multiturn conversation is restored from the JA instruction.
        assert [m.content for m in c1.synthesized_multiturn_conversation[0]] == ["質問一", "c1-r0", "次は？", "c1-t2"]
        assert [a.preference_score for a in c1.synthesized_response_scoring_annotations] == [5, None]
        assert recs["c2"].language == "Japanese" and recs["c2"].redacted is False
        sub = res.report.subsets[CONFIG]
        assert (sub.public_rows, sub.merged, sub.missing_in_source, sub.unsafe_included) == (3, 3, 0, 0)
        assert sub.license.name == "Gemma Terms of Use" and sub.license.generator == "google/gemma-3-27b-it"
        on_disk = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
        assert on_disk["subsets"][CONFIG]["merged"] == 3 and on_disk["source_rows"] == 5

    def test_include_unsafe_adds_flagged_instructions(self, tree: Path, source: str, tmp_path: Path) -> None:
        res = run(tree, source, tmp_path / "out", include_unsafe=True)
        recs = list(iter_recovered(tmp_path / "out" / CONFIG))
        assert [r.conversation_id for r in recs] == ["c2", "c1", "c3", "c0"]
        assert recs[-1].translated_conversation[0].content == "危険な質問"
        assert recs[-1].conversation[0].content == "Unsafe question"
        assert recs[-1].synthesized_assistant_responses == []
        assert res.report.subsets[CONFIG].unsafe_included == 1
        assert res.report.include_unsafe is True

    def test_missing_source_rows_are_counted_and_the_rest_recovered(self, tree: Path, tmp_path: Path) -> None:
        partial = tmp_path / "partial.jsonl"
        partial.write_text(json.dumps(SOURCE[0]) + "\n", encoding="utf-8")  # only c3
        res = run(tree, str(partial), tmp_path / "out")
        sub = res.report.subsets[CONFIG]
        assert (sub.written, sub.merged, sub.missing_in_source) == (3, 1, 2)
        recs = {r.conversation_id: r for r in iter_recovered(tmp_path / "out" / CONFIG)}
        assert recs["c3"].conversation[0].content == "Question three"
        assert recs["c1"].conversation == [] and recs["c1"].redacted is None
        assert recs["c1"].translated_conversation[0].content == "質問一"

    def test_wrong_key_is_one_line_and_writes_nothing(self, tree: Path, source: str, tmp_path: Path) -> None:
        with pytest.raises(PassphraseError) as exc:
            run(tree, source, tmp_path / "out", passphrase=SecretStr("not the key"))
        text = str(exc.value)
        assert "\n" not in text
        assert text.startswith(f"the passphrase does not decrypt {layout.gated_path(CONFIG, unsafe=False)}; ")
        assert "derive it from the original dataset with `lmsynth key" in text
        assert "not the key" not in text
        assert not (tmp_path / "out").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    def test_checksum_mismatch_refuses_and_names_the_file(
        self, tree: Path, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        shard = tree / layout.shard_path(CONFIG, 0, 1)
        data = bytearray(shard.read_bytes())
        data[-20] ^= 0xFF  # same size, different bytes
        shard.write_bytes(bytes(data))
        import lmsynth.crypto

        def no_decrypt(*a: object, **k: object) -> None:
            raise AssertionError("decrypted before checking checksums")

        monkeypatch.setattr(lmsynth.crypto, "decrypt_file", no_decrypt)
        with pytest.raises(ChecksumError) as exc:
            run(tree, source, tmp_path / "out")
        assert exc.value.path == layout.shard_path(CONFIG, 0, 1)
        assert str(exc.value).startswith(f"{layout.shard_path(CONFIG, 0, 1)}: sha256 does not match MANIFEST.json")
        assert not (tmp_path / "out").exists()

    def test_passphrase_from_environment(
        self, tree: Path, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LMSYNTH_PASSPHRASE", KEY.get_secret_value())
        res = run(tree, source, tmp_path / "out", passphrase=None)
        assert res.report.subsets[CONFIG].merged == 3

    def test_rerun_replaces_the_output(self, tree: Path, source: str, tmp_path: Path) -> None:
        run(tree, source, tmp_path / "out", include_unsafe=True)
        run(tree, source, tmp_path / "out")
        assert len(list(iter_recovered(tmp_path / "out" / CONFIG))) == 3

    def test_records_validate_as_recovered_model(self, tree: Path, source: str, tmp_path: Path) -> None:
        run(tree, source, tmp_path / "out")
        line = (tmp_path / "out" / CONFIG / "recovered-00000.jsonl").read_text().splitlines()[0]
        assert RecoveredRecord.model_validate_json(line).conversation_id == "c2"


# ---------------------------------------------------------------------------
# Round trip on the bundled sample: build_release → LocalTarget → recover (key derived) → export → load_dataset
# ---------------------------------------------------------------------------

# Ids of the bundled sample; the JA texts, responses and scores below are written by hand for this test.
A, B, C, D = (
    "82bed0621b71aa0eb1b073b723f6df0d",  # English, not redacted
    "5c441c4d0fb2e9c1eb90a01c6a6293d6",  # English, redacted (PII)
    "dd6cef62e79e3a0216ddb2576ac02b44",  # English, not redacted
    "4b57cdee28aa9139e3eaaf8b193429ec",  # duplicate of A's translation
)
FLAGGED = "8e0e1b8c9709bd7becb273ca78625927"  # moderation-flagged in the sample
JA = {
    A: "カウンターを表示するリアクトの部品を書いてください",
    B: "私の名前と住所を使って短い自己紹介を書いてください",
    C: "インフレの原因をやさしく説明してください",
    FLAGGED: "戦闘の場面を生々しく描写してください",
}
SUBSET = "handmade"


def synth(cid: str, ja: str, scores: list[float | None], **kw: object) -> dict:
    return {
        "conversation_id": cid,
        "translated_conversation": [msg("user", ja)],
        "synthesized_assistant_responses": [msg("assistant", f"回答{cid[:2]}-{i}") for i in range(len(scores))],
        "synthesized_response_scoring_annotations": [
            {
                "response_token_length": 9,
                "judgement": f"評価: [[{s}]]",
                "repetition_flag": False,
                "preference_score": s,
            }
            for s in scores
        ],
        **kw,
    }


HANDMADE = [
    synth(A, JA[A], [6, 9, 2]),
    synth(B, JA[B], [8, None]),
    synth(
        C,
        JA[C],
        [7, 7],
        synthesized_multiturn_conversation=[
            [
                msg("user", JA[C]),
                msg("assistant", "回答dd-0"),
                msg("user", "もっと詳しく"),
                msg("assistant", "回答dd-2"),
            ]
        ],
    ),
    synth(D, JA[A], [], duplicate_user_instruction_ja=A),
]
HANDMADE_UNSAFE = [
    {"conversation_id": FLAGGED, "translated_conversation": [msg("user", JA[FLAGGED])]},
]


def english(cid: str) -> str:
    """The sample's own first user turn (the input, read with plain json)."""
    from lmsynth import constants

    for line in constants.SAMPLE_SOURCE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["conversation_id"] == cid:
            return row["conversation"][0]["content"]
    raise KeyError(cid)


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local git hub holding v0.5 of one hand-written subset, encrypted with the sample's derived key."""
    import yaml

    from lmsynth import constants
    from lmsynth.key import derive_key
    from lmsynth.records import SynthRecord, write_run_info
    from lmsynth.release.build import build_release
    from lmsynth.testing import synthetic_run_info

    root = tmp_path_factory.mktemp("roundtrip")
    run_dir = root / "run"
    for sub, rows in (("records", HANDMADE), ("unsafe", HANDMADE_UNSAFE)):
        (run_dir / sub).mkdir(parents=True)
        (run_dir / sub / "records-00000.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    records = [SynthRecord.model_validate(r) for r in HANDMADE]
    info = synthetic_run_info(records, unsafe=len(HANDMADE_UNSAFE), shape="v0.5", fingerprint="handmade")
    write_run_info(run_dir, info)  # a finished run folder
    manifest = yaml.safe_load((constants.RELEASE_DIR / "demo.yaml").read_text(encoding="utf-8"))
    spec = manifest["subsets"][0]
    spec.update(
        config=SUBSET, records=str(run_dir), pipelines=[], multiturn=True, responses_per_instruction={"ja": 3, "en": 0}
    )
    spec.pop("prepared", None)
    manifest["subsets"] = [spec]
    manifest_path = root / "v0.5.yaml"
    manifest_path.write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    hub = root / "hub"
    build_release(
        "v0.5", manifest_path=manifest_path, target=str(hub), passphrase=derive_key(str(constants.SAMPLE_SOURCE))
    )
    return hub


def load_rows(out: Path, config: str) -> list[dict]:
    from datasets import load_dataset

    return list(load_dataset(str(out), config, split="train", cache_dir=str(out.parent / f"cache-{out.name}")))


class TestRoundTrip:
    def test_release_recover_export_load(self, released: Path, tmp_path: Path) -> None:
        from lmsynth.export.sft_dpo import export_dpo, export_sft

        # Key derived from the bundled sample (no passphrase given, none in the environment).
        res = recover(str(released), revision="v0.5", source=None, out_dir=tmp_path / "rec", passphrase=None)
        sub = res.report.subsets[SUBSET]
        assert (sub.public_rows, sub.written, sub.merged, sub.missing_in_source, sub.unsafe_included) == (
            4,
            4,
            4,
            0,
            0,
        )
        recs = {r.conversation_id: r for r in iter_recovered(tmp_path / "rec" / SUBSET)}
        assert recs[A].conversation[0].content == english(A)
        assert recs[B].redacted is True and recs[A].redacted is False
        assert recs[C].synthesized_multiturn_conversation[0][0].content == JA[C]

        export_sft(tmp_path / "rec", out_dir=tmp_path / "sft")
        assert load_rows(tmp_path / "sft", "sft") == [
            {"messages": [msg("user", JA[A]), msg("assistant", "回答82-1")]},
            {"messages": [msg("user", JA[B]), msg("assistant", "回答5c-0")]},
            {"messages": [msg("user", JA[C]), msg("assistant", "回答dd-0")]},
        ]
        export_sft(tmp_path / "rec", out_dir=tmp_path / "sft_mt", field="multiturn", exclude_pii=True)
        assert load_rows(tmp_path / "sft_mt", "sft") == [
            {"messages": [msg("user", JA[A]), msg("assistant", "回答82-1")]},
            {
                "messages": [
                    msg("user", JA[C]),
                    msg("assistant", "回答dd-0"),
                    msg("user", "もっと詳しく"),
                    msg("assistant", "回答dd-2"),
                ]
            },
        ]
        export_dpo(tmp_path / "rec", out_dir=tmp_path / "dpo")
        assert load_rows(tmp_path / "dpo", "dpo") == [
            {
                "prompt": [msg("user", JA[A])],
                "chosen": [msg("assistant", "回答82-1")],
                "rejected": [msg("assistant", "回答82-2")],
                "score_chosen": 9.0,
                "score_rejected": 2.0,
            }
        ]

    def test_include_unsafe_from_a_real_release(self, released: Path, tmp_path: Path) -> None:
        from lmsynth import constants
        from lmsynth.key import derive_key

        res = recover(
            str(released),
            revision="v0.5",
            source=None,
            out_dir=tmp_path / "rec",
            passphrase=derive_key(str(constants.SAMPLE_SOURCE)),
            include_unsafe=True,
        )
        assert res.report.subsets[SUBSET].unsafe_included == 1
        last = list(iter_recovered(tmp_path / "rec" / SUBSET))[-1]
        assert (last.conversation_id, last.translated_conversation[0].content) == (FLAGGED, JA[FLAGGED])
        assert last.conversation[0].content == english(FLAGGED)


class TestCli:
    def test_recover_then_export_from_the_command_line(self, released: Path, tmp_path: Path) -> None:
        from typer.testing import CliRunner

        from lmsynth.cli.commands import app

        runner = CliRunner()
        rec = runner.invoke(
            app, ["recover", "--from", str(released), "--revision", "v0.5", "--out", str(tmp_path / "r")]
        )
        assert rec.exit_code == 0, rec.output
        assert "Recovered v0.5" in rec.output and "4 written, 4 merged, 0 missing in source" in rec.output
        sft = runner.invoke(app, ["export", "sft", "--input", str(tmp_path / "r"), "--out", str(tmp_path / "s")])
        assert sft.exit_code == 0, sft.output
        assert "rows: train 3" in sft.output
        dpo = runner.invoke(
            app, ["export", "dpo", "--input", str(tmp_path / "r"), "--out", str(tmp_path / "d"), "--min-margin", "8"]
        )
        # A's margin is 7, B has one usable score, C is a tie: nothing passes, nothing is written.
        assert isinstance(dpo.exception, ExportError)
        assert str(dpo.exception).startswith("no dpo rows passed the filters (dropped_below_min_margin 1, ")
        assert not (tmp_path / "d").exists()

    def test_wrong_passphrase_file_is_one_line_on_stderr(
        self, released: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from lmsynth.cli import main

        secret = tmp_path / "key.txt"
        secret.write_text("planted-wrong-secret\n", encoding="utf-8")
        argv = ["lmsynth", "recover", "--from", str(released), "--out", str(tmp_path / "r")]
        monkeypatch.setattr("sys.argv", [*argv, "--passphrase-file", str(secret)])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0] == (
            f"Error: the passphrase does not decrypt {layout.gated_path(SUBSET, unsafe=False)}; "
            "derive it from the original dataset with `lmsynth key --source SRC`"
        )
        assert "planted-wrong-secret" not in "\n".join(err)
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_recovered_and_exported_files_are_private_and_the_card_names_no_local_path(
    released: Path, tmp_path: Path, umask: int
) -> None:
    """Gated text (the recovered and exported instructions) is 0600 in 0700 folders whatever the umask."""
    from tests.test_private_files import lmsynth, modes

    cache = tmp_path / "cache"
    rec = lmsynth(
        "recover",
        "--from",
        str(released),
        "--revision",
        "v0.5",
        "--out",
        "rec",
        cwd=tmp_path,
        umask=umask,
        cache=cache,
    )
    assert rec.returncode == 0, rec.stderr
    assert any(JA[A] in p.read_text(encoding="utf-8") for p in (tmp_path / "rec").rglob("*.jsonl"))
    assert modes(tmp_path / "rec") == {}
    sft = lmsynth("export", "sft", "--input", "rec", "--out", "sft", cwd=tmp_path, umask=umask, cache=cache)
    assert sft.returncode == 0, sft.stderr
    assert modes(tmp_path / "sft") == {}


def test_the_export_card_names_the_source_hub_by_its_name_not_its_path(released: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmsynth.cli.commands import app

    runner = CliRunner()
    assert runner.invoke(app, ["recover", "--from", str(released), "--out", str(tmp_path / "r")]).exit_code == 0
    assert (
        runner.invoke(app, ["export", "sft", "--input", str(tmp_path / "r"), "--out", str(tmp_path / "s")]).exit_code
        == 0
    )
    card = (tmp_path / "s" / "README.md").read_text(encoding="utf-8")
    assert f"export of {released.name} at v0.5" in card
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            assert str(released.parent).encode() not in path.read_bytes(), path
