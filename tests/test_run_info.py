"""`run.json`: one model, one reader, and the test factories write what the runner writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmsynth.errors import InputRecordError
from lmsynth.llm import Completion
from lmsynth.records import RUN_INFO_FILE, RunInfo, Usage, iter_synth_records, read_run_info, write_run_info
from lmsynth.testing import write_run_dir


def test_factory_run_json_is_a_run_info_with_the_records_counts(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path / "run", 120, unsafe_n=3, seed=2)
    info = read_run_info(run)
    records = list(iter_synth_records(run))
    assert info.counts.instructions == len(records) == 120 and info.counts.unsafe == 3
    assert info.counts.empty == sum(r.empty_user_instruction_ja for r in records) > 0
    assert info.counts.duplicate == sum(r.duplicate_user_instruction_ja is not None for r in records) > 0
    assert info.counts.responses_ja == sum(len(r.synthesized_assistant_responses) for r in records)
    lengths = [a.response_token_length for r in records for a in r.synthesized_response_scoring_annotations]
    assert info.tokens["generate"].completion_tokens == sum(lengths)
    # Strictly the model's shape: the file validates as the runner's own output does.
    assert RunInfo.model_validate_json((run / RUN_INFO_FILE).read_text(), strict=True) == info


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    info = read_run_info(write_run_dir(tmp_path / "run", 5))
    write_run_info(tmp_path / "copy", info.model_copy(update={"pipeline": "other"}))
    assert read_run_info(tmp_path / "copy") == info.model_copy(update={"pipeline": "other"})


def test_missing_file_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InputRecordError, match="cannot read") as err:
        read_run_info(tmp_path)
    assert err.value.path == str(tmp_path / RUN_INFO_FILE) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["counts"].pop("unsafe"), "counts.unsafe"),
        (lambda d: d["tokens"]["generate"].update(requests="3"), "tokens.generate.requests"),
        (lambda d: d.update(extra=1), "extra"),
    ],
)
def test_invalid_file_names_the_file_and_field(tmp_path: Path, change, field: str) -> None:  # noqa: ANN001
    run = write_run_dir(tmp_path / "run", 5)
    data = json.loads((run / RUN_INFO_FILE).read_text())
    change(data)
    (run / RUN_INFO_FILE).write_text(json.dumps(data))
    with pytest.raises(InputRecordError) as err:
        read_run_info(run)
    assert err.value.path == str(run / RUN_INFO_FILE) and err.value.field == field


def test_text_read_elsewhere_is_named_by_its_folder() -> None:
    with pytest.raises(InputRecordError) as err:
        read_run_info("hf://datasets/org/runs@abc/v05/", text="{")
    assert str(err.value).startswith("hf://datasets/org/runs@abc/v05/run.json: not valid JSON")


def test_usage_of_a_request_counts_the_prompt_once() -> None:
    completions = [Completion(text="a", prompt_tokens=7, completion_tokens=k) for k in (3, 4)]
    assert Usage.of(completions, reasks=1) == Usage(requests=1, prompt_tokens=7, completion_tokens=7, reasks=1)
    assert Usage.of([]) == Usage(requests=1)
