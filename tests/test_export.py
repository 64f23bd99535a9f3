"""export_sft / export_dpo: hand-written records with known scores give exactly the expected rows."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lmsynth.errors import ExportError
from lmsynth.export.selection import ExportFilters, best_index, dpo_row, split_of, worst_index
from lmsynth.export.sft_dpo import export_dpo, export_sft
from lmsynth.io import write_json, write_jsonl
from lmsynth.recover import REPORT_FILE, RecoveredRecord, RecoverReport, SubsetLicense, SubsetRecovery


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def ann(score: float | None, *, rep: bool = False) -> dict:
    return {"response_token_length": 10, "judgement": "ok", "repetition_flag": rep, "preference_score": score}


def rec(cid: str, ja: str, scores: list, *, en: str | None = None, en_resp: str | None = None, **kw) -> dict:
    """A recovered record whose JA responses are `<cid>-r<i>` with the given scores."""
    reps = kw.pop("reps", ())
    return {
        "conversation_id": cid,
        "translated_conversation": [msg("user", ja)],
        "synthesized_assistant_responses": [msg("assistant", f"{cid}-r{i}") for i in range(len(scores))],
        "synthesized_response_scoring_annotations": [ann(s, rep=i in reps) for i, s in enumerate(scores)],
        "synthesized_assistant_responses_en": [msg("assistant", en_resp)] if en_resp else None,
        "conversation": [msg("user", en)] if en else [],
        "redacted": kw.pop("redacted", False),
        "language": "English",
        **kw,
    }


# The hand-written records (see each line for what it tests).
RECORDS = [
    rec("c1", "質問1", [7, 9, 9, None], en="Q1", en_resp="A1"),  # best: r1 (tie with r2 → lowest); worst r0
    rec("c2", "質問1", [8, 3], duplicate_user_instruction_ja="c1"),  # duplicate: never exported
    rec("c3", "", [8, 3], empty_user_instruction_ja=True),  # empty: never exported
    rec("c4", "質問4", [5, 5], en="Q4", en_resp="A4"),  # tie: SFT r0, DPO skipped
    rec("c5", "質問5", [3, 8], redacted=True, reps=(1,)),  # PII; r1 is a repetition
    rec("c6", "質問6", [2, 6, None], is_template_instruction="company introduction"),  # template
    rec("c7", "質問7", [None, None]),  # only failed ratings: nothing usable
    rec(
        "c8",
        "質問8",
        [4, 6],
        synthesized_multiturn_conversation=[
            [msg("user", "質問8"), msg("assistant", "c8-r1"), msg("user", "続き8"), msg("assistant", "c8-t2")]
        ],
    ),
]


def u(text: str) -> dict:
    return msg("user", text)


def a(text: str) -> dict:
    return msg("assistant", text)


@pytest.fixture()
def recovered(tmp_path: Path) -> Path:
    return write_recovered(tmp_path / "recovered", RECORDS)


def write_recovered(folder: Path, records: list[dict], *, subset: str = "gemma3") -> Path:
    models = [RecoveredRecord.model_validate(r) for r in records]
    write_jsonl(folder / subset / "recovered-00000.jsonl", models)
    report = RecoverReport(
        target="hub",
        revision="v0.5",
        include_unsafe=False,
        source_rows=len(records),
        subsets={
            subset: SubsetRecovery(
                public_rows=len(records),
                gated_instructions=len(records),
                written=len(records),
                merged=len(records),
                missing_in_source=0,
                missing_instruction=0,
                unsafe_included=0,
                files=["recovered-00000.jsonl"],
                license=SubsetLicense(
                    generator="google/gemma-3-27b-it",
                    name="Gemma Terms of Use",
                    link="https://ai.google.dev/gemma/terms",
                ),
            )
        },
    )
    write_json(folder / REPORT_FILE, report.model_dump(mode="json"))
    return folder


def load(out: Path, config: str) -> dict[str, list[dict]]:
    from datasets import load_dataset

    # `datasets` fixes its cache folder at import and keys a local folder's cache on its name, so two
    # tests exporting to `out` would share a cache: each load gets the test's own.
    ds = load_dataset(str(out), config, cache_dir=str(out.parent / "hf-cache"))
    return {split: list(ds[split]) for split in ds}


class TestSelection:
    def test_best_is_highest_score_lowest_index_on_tie(self) -> None:
        r = RecoveredRecord.model_validate(RECORDS[0])
        assert best_index(r, drop_repetitions=False) == 1
        assert worst_index(r, drop_repetitions=False) == 0

    def test_failed_ratings_are_never_chosen(self) -> None:
        r = RecoveredRecord.model_validate(rec("x", "q", [None, 1, None]))
        assert best_index(r, drop_repetitions=False) == 1
        assert best_index(RecoveredRecord.model_validate(RECORDS[6]), drop_repetitions=False) is None

    def test_drop_repetitions_skips_flagged_responses(self) -> None:
        r = RecoveredRecord.model_validate(RECORDS[4])
        assert best_index(r, drop_repetitions=False) == 1
        assert best_index(r, drop_repetitions=True) == 0

    def test_dpo_tie_is_skipped_and_counted(self) -> None:
        counts: Counter[str] = Counter()
        row = dpo_row(RecoveredRecord.model_validate(RECORDS[3]), min_margin=0, filters=ExportFilters(), counts=counts)
        assert row is None and counts == {"dropped_tie": 1}

    def test_split_is_stable_and_seeded(self) -> None:
        ids = [f"id{i}" for i in range(400)]
        first = [split_of(i, test_size=0.25, seed=1) for i in ids]
        assert first == [split_of(i, test_size=0.25, seed=1) for i in ids]
        assert 60 < first.count("test") < 140
        assert first != [split_of(i, test_size=0.25, seed=2) for i in ids]
        assert {split_of(i, test_size=0.0, seed=1) for i in ids} == {"train"}


class TestExportSft:
    def test_default_rows_load_exactly(self, recovered: Path, tmp_path: Path) -> None:
        res = export_sft(recovered, out_dir=tmp_path / "out")
        rows = load(tmp_path / "out", "sft")
        assert list(rows) == ["train"]
        assert rows["train"] == [
            {"messages": [u("質問1"), a("c1-r1")]},
            {"messages": [u("質問4"), a("c4-r0")]},
            {"messages": [u("質問5"), a("c5-r1")]},
            {"messages": [u("質問6"), a("c6-r1")]},
            {"messages": [u("質問8"), a("c8-r1")]},
        ]
        assert res.counts == {
            "records": 8,
            "dropped_duplicate": 1,
            "dropped_empty_instruction": 1,
            "dropped_no_scored_response": 1,
            "kept": 5,
        }
        assert res.rows == {"train": 5}

    def test_filters(self, recovered: Path, tmp_path: Path) -> None:
        res = export_sft(
            recovered,
            out_dir=tmp_path / "out",
            exclude_pii=True,
            exclude_templates=True,
            min_score=6,
            field="multiturn",
        )
        assert load(tmp_path / "out", "sft")["train"] == [
            {"messages": [u("質問1"), a("c1-r1")]},
            {"messages": [u("質問8"), a("c8-r1"), u("続き8"), a("c8-t2")]},
        ]
        assert res.counts["dropped_pii"] == 1
        assert res.counts["dropped_template"] == 1
        assert res.counts["dropped_below_min_score"] == 1  # c4 (best 5)

    def test_english_and_both(self, recovered: Path, tmp_path: Path) -> None:
        export_sft(recovered, out_dir=tmp_path / "en", lang="en")
        assert load(tmp_path / "en", "sft")["train"] == [
            {"messages": [u("Q1"), a("A1")]},
            {"messages": [u("Q4"), a("A4")]},
        ]
        res = export_sft(recovered, out_dir=tmp_path / "both", lang="both")
        assert res.rows == {"train": 7}

    def test_test_split_partitions_by_id(self, recovered: Path, tmp_path: Path) -> None:
        export_sft(recovered, out_dir=tmp_path / "out", test_size=0.5, seed=3)
        rows = load(tmp_path / "out", "sft")
        firsts = {r["messages"][0]["content"] for split in rows.values() for r in split}
        assert firsts == {"質問1", "質問4", "質問5", "質問6", "質問8"}
        expected_test = {
            f"質問{c[1:]}" for c in ("c1", "c4", "c5", "c6", "c8") if split_of(c, test_size=0.5, seed=3) == "test"
        }
        assert {r["messages"][0]["content"] for r in rows.get("test", [])} == expected_test

    def test_card_has_configs_counts_and_licenses(self, recovered: Path, tmp_path: Path) -> None:
        export_sft(recovered, out_dir=tmp_path / "out", test_size=0.5, seed=3)
        text = (tmp_path / "out" / "README.md").read_text()
        meta = yaml.safe_load(text.split("---")[1])
        assert meta["configs"] == [
            {
                "config_name": "sft",
                "data_files": [
                    {"split": "train", "path": "sft/train-*.parquet"},
                    {"split": "test", "path": "sft/test-*.parquet"},
                ],
                "default": True,
            }
        ]
        assert meta["license"] == "other" and meta["license_name"] == "mixed"
        assert "LMSYS-Chat-1M Dataset License Agreement" in text
        assert "[Gemma Terms of Use](https://ai.google.dev/gemma/terms)" in text
        assert "google/gemma-3-27b-it" in text
        assert "| dropped_duplicate | 1 |" in text

    def test_not_a_recovered_folder_is_one_line(self, tmp_path: Path) -> None:
        (tmp_path / "in").mkdir()
        with pytest.raises(ExportError, match="lmsynth recover") as exc:
            export_sft(tmp_path / "in", out_dir=tmp_path / "out")
        assert "\n" not in str(exc.value)
        assert not (tmp_path / "out").exists()

    def test_unknown_subset(self, recovered: Path, tmp_path: Path) -> None:
        with pytest.raises(ExportError, match="`subsets`: nope"):
            export_sft(recovered, out_dir=tmp_path / "out", subsets=["nope"])

    def test_shards_rotate(self, recovered: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import lmsynth.export.sft_dpo as export

        monkeypatch.setattr(export, "SHARD_ROWS", 2)
        res = export_sft(recovered, out_dir=tmp_path / "out")
        assert res.files == [f"sft/train-0000{i}-of-00003.parquet" for i in range(3)]
        assert len(load(tmp_path / "out", "sft")["train"]) == 5


class TestExportDpo:
    def test_default_pairs_load_exactly(self, recovered: Path, tmp_path: Path) -> None:
        res = export_dpo(recovered, out_dir=tmp_path / "out")
        assert load(tmp_path / "out", "dpo")["train"] == [
            {
                "prompt": [u("質問1")],
                "chosen": [a("c1-r1")],
                "rejected": [a("c1-r0")],
                "score_chosen": 9.0,
                "score_rejected": 7.0,
            },
            {
                "prompt": [u("質問5")],
                "chosen": [a("c5-r1")],
                "rejected": [a("c5-r0")],
                "score_chosen": 8.0,
                "score_rejected": 3.0,
            },
            {
                "prompt": [u("質問6")],
                "chosen": [a("c6-r1")],
                "rejected": [a("c6-r0")],
                "score_chosen": 6.0,
                "score_rejected": 2.0,
            },
            {
                "prompt": [u("質問8")],
                "chosen": [a("c8-r1")],
                "rejected": [a("c8-r0")],
                "score_chosen": 6.0,
                "score_rejected": 4.0,
            },
        ]
        assert res.counts["dropped_tie"] == 1
        assert res.counts["dropped_no_scored_response"] == 1

    def test_min_margin_and_repetitions(self, recovered: Path, tmp_path: Path) -> None:
        res = export_dpo(recovered, out_dir=tmp_path / "out", min_margin=3, drop_repetitions=True)
        assert [r["prompt"][0]["content"] for r in load(tmp_path / "out", "dpo")["train"]] == ["質問6"]
        # c1 (margin 2) and c8 (margin 2) fall below 3; c5 has one usable response once r1 is dropped.
        assert res.counts["dropped_below_min_margin"] == 2
        assert res.counts["dropped_no_scored_response"] == 2

    def test_negative_margin_refused(self, recovered: Path, tmp_path: Path) -> None:
        with pytest.raises(ExportError, match="`min_margin`"):
            export_dpo(recovered, out_dir=tmp_path / "out", min_margin=-1)


# Runs in a child process with its own Hub stand-in: the hub clients read HF_ENDPOINT once, at import, and
# the session's stand-in fixtures belong to tests/hub/.
PUSH_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from tests.hub.hf_server import HubStandIn
hub = HubStandIn().start()
os.environ.update(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_test_write_token_123456")
from datasets import load_dataset
from lmsynth.export.push import publish_export
out, tag = Path(sys.argv[1]), sys.argv[2]
pub = publish_export(out, target_uri="hf://me/sft-ja", tag=tag, private=True)
commits = hub.state.commits_on("me/sft-ja")
again = publish_export(out, target_uri="hf://me/sft-ja", tag=tag, private=True)
ds = load_dataset("me/sft-ja", "sft", revision=tag, cache_dir=str(out.parent / "push-cache"))
repo = hub.state.repo("me/sft-ja")
print(json.dumps({
    "created": pub.created_commit, "tag_at_commit": repo.tags[tag] == pub.commit, "private": repo.private,
    "again_created": again.created_commit, "same_commits": hub.state.commits_on("me/sft-ja") == commits,
    "rows": {k: len(v) for k, v in ds.items()},
}))
hub.stop()
"""


OFFLINE_SWITCHES = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"}


@pytest.mark.hub
class TestPush:
    def test_push_private_to_the_hub_and_load_at_the_tag(self, recovered: Path, tmp_path: Path) -> None:
        import json
        import subprocess
        import sys

        from lmsynth.export.sft_dpo import export_tag

        res = export_sft(recovered, out_dir=tmp_path / "out", test_size=0.5, seed=3)
        root = Path(__file__).resolve().parent.parent
        proc = subprocess.run(
            [sys.executable, "-c", PUSH_SCRIPT, str(res.out_dir), export_tag(res)],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
            # The session's engine fixtures set the offline switches for engine tests; this child talks to a hub.
            env={k: v for k, v in os.environ.items() if k not in OFFLINE_SWITCHES},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got == {
            "created": True,
            "tag_at_commit": True,
            "private": True,
            "again_created": False,
            "same_commits": True,
            "rows": {"train": res.rows["train"], "test": res.rows["test"]},
        }
        assert export_tag(res) == "sft-v0.5"

    def test_private_refused_where_visibility_is_not_supported(self, recovered: Path, tmp_path: Path) -> None:
        from lmsynth.export.push import publish_export

        res = export_sft(recovered, out_dir=tmp_path / "out")
        with pytest.raises(ExportError, match="`--private` is supported for hf:// targets"):
            publish_export(res.out_dir, target_uri="ms://me/sft-ja", tag="sft-v0.5", private=True)
