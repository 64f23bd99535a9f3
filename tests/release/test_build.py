"""`build_release` end to end into a local git hub: loadable, deterministic, idempotent, guarded."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from lmsynth import constants, keycheck
from lmsynth.crypto import decrypt_file
from lmsynth.errors import InputRecordError, LeakError, ManifestError, PassphraseError, TagConflictError
from lmsynth.records import RUN_RECORDS_DIR
from lmsynth.release.build import ReleaseResult, build_release
from lmsynth.release.verify import verify
from lmsynth.targets.local import LocalTarget
from lmsynth.testing import en_instruction_for, ja_instruction_for
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import check_tree
from tests.release.conftest import PASSPHRASE, N, Project, make_project


def _release(project: Project, **kw: object):  # noqa: ANN202
    kw.setdefault("passphrase", project.passphrase)
    return build_release("v0.5", manifest_path=project.manifest, target=str(project.hub), **kw)


def _load(project: Project, config: str) -> datasets.Dataset:
    """`load_dataset` on the hub folder itself."""
    return datasets.load_dataset(str(project.hub), config, split="train")


def _first_shard(project: Project, config: str) -> Path:
    return next((project.runs(config) / RUN_RECORDS_DIR).glob("*.jsonl"))


def _rewrite_line(path: Path, index: int, fn) -> None:  # noqa: ANN001
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[index] = fn(lines[index])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="class")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, ReleaseResult]]:
    """One v0.5 release into a local hub, built once for the tests that only read it."""
    root = tmp_path_factory.mktemp("released")
    with pytest.MonkeyPatch.context() as mp:  # the per-test isolation is not set up yet at class scope
        for var, sub in (("LMSYNTH_CACHE", "cache"), ("HF_HOME", "hf"), ("GNUPGHOME", "gnupg")):
            mp.setenv(var, str(root / "home" / sub))
        mp.setenv("HF_DATASETS_CACHE", str(root / "home" / "hf" / "datasets"))
        mp.setattr(constants, "CACHE_DIR", root / "home" / "cache")
        project_dir = root / "project"
        project_dir.mkdir()
        mp.chdir(project_dir)
        project = make_project(project_dir)
        yield project, _release(project)


@pytest.mark.xdist_group("released")  # the tests sharing one release run on one worker
class TestRelease:
    def test_release_loads_with_load_dataset(self, released: tuple[Project, ReleaseResult]) -> None:
        project, res = released
        assert res.created_commit and res.commit
        assert LocalTarget(project.hub).tags() == ["v0.5"]
        for config in ("llama-3.1", "gemma-2", "gemma-3"):
            ds = _load(project, config)
            assert len(ds) == N == res.counts[config].records
            assert "translated_conversation" not in ds.column_names
        g3 = _load(project, "gemma-3")
        assert "synthesized_assistant_responses_en" not in g3.column_names
        assert "synthesized_multiturn_conversation" not in g3.column_names
        assert res.counts["gemma-3"].responses_ja == sum(len(r) for r in g3["synthesized_assistant_responses"])

    def test_public_multiturn_first_user_turn_is_empty(self, released: tuple[Project, ReleaseResult]) -> None:
        project, _ = released
        g2 = _load(project, "gemma-2")
        convs = [c for row in g2["synthesized_multiturn_conversation"] for c in row]
        assert convs and all(c[0]["role"] == "user" and c[0]["content"] == "" for c in convs)
        assert any(len(c) == 4 and c[2]["content"] for c in convs)

    def test_card_yaml_and_manifest(self, released: tuple[Project, ReleaseResult]) -> None:
        project, _ = released
        card = (project.hub / "README.md").read_text(encoding="utf-8")
        header = card.split("---\n")[1]
        import yaml

        meta = yaml.safe_load(header)
        assert meta["license"] == "other" and meta["size_categories"] == ["n<1K"]
        assert meta["source_datasets"] == ["lmsys/lmsys-chat-1m"] and meta["language"] == ["ja", "en"]
        assert [c["config_name"] for c in meta["configs"]] == ["llama-3.1", "gemma-2", "gemma-3"]
        assert meta["configs"][0]["default"] is True
        assert meta["configs"][2]["data_files"] == [{"split": "train", "path": "data/gemma-3/train-*.parquet"}]
        assert "Built with Llama" in card and "https://ai.google.dev/gemma/terms" in card
        assert "gpg --batch --passphrase-fd 0 -d" in card and "lmsynth recover" in card
        for config in ("llama-3.1", "gemma-2", "gemma-3"):
            assert (project.hub / layout.subset_card(config)).is_file()
            assert (project.hub / layout.figure_path(config, "preference-score-distribution")).is_file()
        manifest = json.loads((project.hub / layout.MANIFEST_FILE).read_text())
        gated = manifest["files"][layout.gated_path("gemma-3", unsafe=True)]
        assert gated["records"] == N + 4 and len(gated["plaintext_sha256"]) == 64
        assert "pipelines/gemma-3.yaml" in manifest["pipelines"]
        assert manifest["subsets"]["gemma-3"]["counts"]["gated_default"] == N
        check_tree(project.hub)

    def test_gated_files_decrypt_sorted_and_unsafe_is_a_superset(
        self, released: tuple[Project, ReleaseResult], tmp_path: Path
    ) -> None:
        project, _ = released
        ids = {}
        for unsafe in (False, True):
            plain = decrypt_file(
                project.hub / layout.gated_path("gemma-3", unsafe=unsafe),
                tmp_path / "p.gz",
                passphrase=project.passphrase,
            )
            with gzip.open(plain, "rt", encoding="utf-8") as f:
                rows = [json.loads(line) for line in f]
            ids[unsafe] = [r["conversation_id"] for r in rows]
            assert ids[unsafe] == sorted(ids[unsafe])
        assert len(ids[False]) == N and set(ids[False]) < set(ids[True]) and len(ids[True]) == N + 4

    def test_verify_with_key(self, released: tuple[Project, ReleaseResult]) -> None:
        project, _ = released
        res = verify("v0.5", target=str(project.hub), passphrase=project.passphrase)
        assert res.rows == {"gemma-2": N, "gemma-3": N, "llama-3.1": N} and res.gated_checked == 6

    def test_verify_wrong_passphrase(self, released: tuple[Project, ReleaseResult]) -> None:
        project, _ = released
        with pytest.raises(PassphraseError, match="lmsynth key"):
            verify("v0.5", target=str(project.hub), passphrase=SecretStr("not-the-key"))

    def test_shards_rotate(self, project: Project) -> None:
        res = _release(project, shard_bytes=20_000)
        shards = sorted((project.hub / "data" / "gemma-3").glob("*.parquet"))
        assert len(shards) > 2 and shards[0].name.endswith(f"-of-{len(shards):05d}.parquet")
        assert sum(pq.ParquetFile(s).metadata.num_rows for s in shards) == N == res.counts["gemma-3"].records
        assert len(_load(project, "gemma-3")) == N


class TestDeterminismAndIdempotence:
    def test_public_tree_is_byte_identical_on_rebuild(self, project: Project, tmp_path: Path) -> None:
        a = _release(project, dry_run=True, out_dir=tmp_path / "a").out_dir
        b = _release(project, dry_run=True, out_dir=tmp_path / "b").out_dir
        files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
        assert files_a == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
        for rel in files_a:
            if layout.is_encrypted(rel):
                continue
            if rel == layout.MANIFEST_FILE:
                ma, mb = (json.loads((d / rel).read_text()) for d in (a, b))
                for m in (ma, mb):
                    for f, e in m["files"].items():
                        if layout.is_encrypted(f):
                            e.pop("sha256"), e.pop("size")
                    # The key check is salted afresh (like gpg's output); a re-release keeps the published one.
                    assert keycheck.matches(m.pop("source_fingerprint"), project.passphrase)
                assert ma == mb
            else:
                assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        # Gated files: same plaintext, though gpg's bytes differ.
        rel = layout.gated_path("gemma-3", unsafe=False)
        assert (a / rel).read_bytes() != (b / rel).read_bytes()
        pa_ = decrypt_file(a / rel, tmp_path / "pa", passphrase=project.passphrase).read_bytes()
        pb_ = decrypt_file(b / rel, tmp_path / "pb", passphrase=project.passphrase).read_bytes()
        assert pa_ == pb_

    def test_re_release_is_a_no_op(self, project: Project) -> None:
        first = _release(project)
        second = _release(project)
        assert not second.created_commit and second.commit == first.commit
        assert len(second.reused_ciphertexts) == 6
        assert LocalTarget(project.hub).commit_count() == 1

    def test_changed_content_conflicts_unless_forced(self, project: Project) -> None:
        first = _release(project)
        _rewrite_line(
            _first_shard(project, "gemma-3"),
            0,
            lambda s: json.dumps({**json.loads(s), "is_template_instruction": "changed"}, ensure_ascii=False),
        )
        with pytest.raises(TagConflictError) as info:
            _release(project)
        assert info.value.tag == "v0.5" and "--force" in str(info.value)
        assert (
            subprocess.run(
                ["git", "rev-parse", "v0.5^{commit}"], cwd=project.hub, capture_output=True, text=True
            ).stdout.strip()
            == first.commit
        )
        forced = _release(project, force=True)
        assert forced.moved_tag and forced.commit != first.commit
        assert LocalTarget(project.hub).commit_count() == 2


class TestGuards:
    def test_leak_guard_refuses_planted_ja_instruction(self, project: Project) -> None:
        shard = _first_shard(project, "gemma-3")
        victim = json.loads(shard.read_text(encoding="utf-8").splitlines()[5])["conversation_id"]

        def plant(line: str) -> str:
            rec = json.loads(line)
            rec["synthesized_assistant_responses"][0]["content"] += "引用: " + ja_instruction_for(victim)
            return json.dumps(rec, ensure_ascii=False)

        _rewrite_line(shard, 2, plant)
        with pytest.raises(LeakError) as info:
            _release(project)
        assert info.value.path.startswith("data/gemma-3/") and info.value.path.endswith(".parquet")
        assert ja_instruction_for(victim) not in str(info.value)
        assert not project.hub.exists()

    def test_leak_guard_refuses_planted_en_original(self, project: Project) -> None:
        shard = _first_shard(project, "llama-3.1")
        from lmsynth.testing import conversation_id_for

        original = en_instruction_for(conversation_id_for(7, 11))

        def plant(line: str) -> str:
            rec = json.loads(line)
            rec["synthesized_response_scoring_annotations"][0]["judgement"] = f"The user asked: {original}"
            return json.dumps(rec, ensure_ascii=False)

        _rewrite_line(shard, 3, plant)
        with pytest.raises(LeakError, match="data/llama-3.1/"):
            _release(project)
        assert not project.hub.exists()

    @pytest.mark.parametrize(
        ("mutate", "line", "field"),
        [
            (lambda s: s[:-5], 4, None),
            (
                lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "conversation_id"}),
                4,
                "conversation_id",
            ),
            (lambda s: s.replace('"repetition_flag": false', '"repetition_flag": "often"', 1), 4, None),
        ],
        ids=["malformed-json", "missing-field", "bad-type"],
    )
    def test_bad_record_is_one_line_and_nothing_is_written(self, project: Project, mutate, line, field) -> None:  # noqa: ANN001
        _release(project)
        before = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project.hub, capture_output=True, text=True).stdout
        shard = _first_shard(project, "gemma-3")
        _rewrite_line(shard, line, mutate)
        with pytest.raises(InputRecordError) as info:
            _release(project, force=True)
        msg = str(info.value)
        assert "\n" not in msg and str(shard.relative_to(project.root)) in msg and f"line {line + 1}" in msg
        if field:
            assert info.value.field == field and f"`{field}`" in msg
        assert (
            subprocess.run(["git", "rev-parse", "HEAD"], cwd=project.hub, capture_output=True, text=True).stdout
            == before
        )
        assert (
            subprocess.run(["git", "status", "--porcelain"], cwd=project.hub, capture_output=True, text=True).stdout
            == ""
        )

    def test_duplicate_conversation_id(self, project: Project) -> None:
        shard = _first_shard(project, "gemma-2")
        first_id = json.loads(shard.read_text(encoding="utf-8").splitlines()[0])["conversation_id"]
        _rewrite_line(
            shard, 9, lambda s: json.dumps({**json.loads(s), "conversation_id": first_id}, ensure_ascii=False)
        )
        with pytest.raises(InputRecordError) as info:
            _release(project)
        assert info.value.field == "conversation_id" and info.value.line == 10 and "line 1" in str(info.value)
        assert not project.hub.exists()

    def test_missing_records_and_unknown_override(self, project: Project) -> None:
        with pytest.raises(InputRecordError, match="no such file"):
            _release(project, records_overrides={"gemma-3": project.root / "nowhere"})
        with pytest.raises(ManifestError) as info:
            _release(project, records_overrides={"gemma-9": project.runs("gemma-3")})
        assert info.value.subset == "gemma-9"

    def test_no_passphrase_refused(self, project: Project) -> None:
        with pytest.raises(PassphraseError, match="no passphrase"):
            build_release("v0.5", manifest_path=project.manifest, target=str(project.hub), passphrase=None)

    def test_passphrase_never_written_logged_or_printed(
        self, project: Project, caplog: pytest.LogCaptureFixture, tmp_path: Path
    ) -> None:
        from typer.testing import CliRunner

        from lmsynth.cli.commands import app

        key = tmp_path / "key.txt"
        key.write_text(PASSPHRASE + "\n", encoding="utf-8")
        caplog.set_level(logging.DEBUG)
        runner = CliRunner()
        args = ["--manifest", str(project.manifest), "--to", str(project.hub), "--passphrase-file", str(key)]
        res = runner.invoke(app, ["release", "v0.5", *args, "--out", str(tmp_path / "tree")])
        assert res.exit_code == 0, res.output
        assert "Released v0.5" in res.output
        ver = runner.invoke(app, ["verify", "v0.5", "--from", str(project.hub), "--passphrase-file", str(key)])
        assert ver.exit_code == 0, ver.output
        bad = runner.invoke(app, ["release", "v0.5", *args[:-1], str(project.root / "missing-key")])
        assert bad.exit_code == 1
        planted = PASSPHRASE.encode()
        for folder in (project.hub, tmp_path / "tree"):
            for f in folder.rglob("*"):
                if f.is_file():
                    assert planted not in f.read_bytes(), f
        outputs = res.output + ver.output + bad.output + caplog.text
        assert PASSPHRASE not in outputs and PASSPHRASE[:16] not in outputs
        assert PASSPHRASE not in (project.hub / layout.MANIFEST_FILE).read_text(encoding="utf-8")
