"""Records are validated per batch with Arrow; what Arrow alone would accept is still refused with file, line, field.

Also: the cards' `features:` equal what `datasets` writes for the same schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmsynth import constants
from lmsynth.errors import InputRecordError
from lmsynth.records import RUN_RECORDS_DIR, GatedInstruction
from lmsynth.release import data_files
from lmsynth.release.release_yaml import load_manifest
from lmsynth.testing import write_run_dir


def _spec(config: str = "gemma-3"):  # noqa: ANN202
    return load_manifest(constants.RELEASE_DIR / "v0.5.yaml").subset(config)


def _mutate(run: Path, index: int, fn) -> Path:  # noqa: ANN001
    shard = sorted((run / RUN_RECORDS_DIR).glob("*.jsonl"))[0]
    lines = shard.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[index])
    fn(rec)
    lines[index] = json.dumps(rec, ensure_ascii=False)
    shard.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return shard


def _write(run: Path, tmp_path: Path, config: str = "gemma-3") -> data_files.SubsetOutput:
    return data_files.write_subset(_spec(config), records=run, tree=tmp_path / "tree", rows_per_group=7)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda r: r["synthesized_assistant_responses"][0].update(role="robot"),
            "synthesized_assistant_responses[0].role",
        ),
        (
            lambda r: r["synthesized_response_scoring_annotations"][1].update(response_token_length=-3),
            "synthesized_response_scoring_annotations[1].response_token_length",
        ),
        (lambda r: r["translated_conversation"][0].update(extra="x"), "translated_conversation[0].extra"),
        (lambda r: r.update(conversation_id=""), "conversation_id"),
        (lambda r: r["synthesized_response_scoring_annotations"].pop(), "synthesized_response_scoring_annotations"),
        (
            lambda r: r.update(synthesized_assistant_responses_en=[{"role": "assistant", "content": "Hi"}]),
            "synthesized_assistant_responses_en",
        ),
    ],
    ids=["role", "negative-length", "extra-nested-field", "empty-id", "annotation-count", "unpublished-field"],
)
def test_constraint_violations_name_file_line_and_field(tmp_path: Path, mutate, field: str) -> None:  # noqa: ANN001
    run = write_run_dir(tmp_path / "run", 30, shape="v0.5", seed=3)
    shard = _mutate(run, 17, mutate)
    with pytest.raises(InputRecordError) as err:
        _write(run, tmp_path)
    assert err.value.field == field and err.value.line == 18 and str(shard) in str(err.value)


def test_bulk_and_line_by_line_give_the_same_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_run_dir(tmp_path / "run", 40, shape="v0.3", seed=5)
    fast = _write(run, tmp_path / "fast", config="gemma-2")
    monkeypatch.setattr(data_files, "_bulk_valid", lambda spec, table: False)  # every batch takes the slow path
    slow = _write(run, tmp_path / "slow", config="gemma-2")
    assert fast.counts == slow.counts and fast.counts.multiturn > 0
    for a, b in zip(fast.shards, slow.shards, strict=True):
        assert pq.read_table(tmp_path / "fast" / "tree" / a) == pq.read_table(tmp_path / "slow" / "tree" / b)
    fast_lines = list(fast.gated["default"]())
    slow_lines = list(slow.gated["default"]())
    assert fast_lines == slow_lines and len(fast_lines) == fast.counts.gated_default
    # Gated lines are exactly what the GatedInstruction model writes.
    rec = GatedInstruction.model_validate_json(fast_lines[0])
    assert rec.model_dump_json() == fast_lines[0]


@pytest.mark.parametrize("config", ["llama-3.1", "gemma-2", "gemma-3"])
def test_card_features_are_what_datasets_writes(config: str) -> None:
    from datasets import Features

    from lmsynth.release.dataset_cards import features_yaml

    spec = _spec(config)
    assert features_yaml(spec) == Features.from_arrow_schema(data_files.arrow_schema(spec))._to_yaml_list()
