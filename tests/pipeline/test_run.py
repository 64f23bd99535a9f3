"""`lmsynth run` end to end through distilabel with the fake backend: folder contract, resume, kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmsynth.pipeline.run import run_pipeline
from lmsynth.pipeline.telemetry.report_files import read_report
from lmsynth.records import RunInfo, SynthRecord, iter_synth_records
from tests.pipeline.factories import make_record, write_fake_pipeline, write_prepared


def prepared(tmp_path: Path, n: int = 6) -> Path:
    records = [make_record(i) for i in range(n)]
    records[1] = make_record(1, language="Japanese", instruction="日本語の質問")
    records[2] = make_record(2, instruction="Question number 0?")  # translates like c0: a duplicate
    records[3] = make_record(3, instruction="", is_template_instruction="company introduction")
    unsafe = [make_record(90, instruction="Something flagged")]
    return write_prepared(tmp_path / "prep", records, unsafe)


def calls(log: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.timeout(300)
def test_run_writes_the_folder_contract_and_resumes(tmp_path: Path) -> None:
    pipe, log = write_fake_pipeline(tmp_path)
    prep = prepared(tmp_path)
    result = run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "out")
    records = list(iter_synth_records(tmp_path / "out"))
    assert [r.conversation_id for r in records] == [f"c{i}" for i in range(6)]
    by_id = {r.conversation_id: r for r in records}
    # Japanese passes through; English is translated (the fake echoes its reply).
    assert by_id["c1"].translated_conversation[0].content == "日本語の質問"
    assert by_id["c2"].duplicate_user_instruction_ja == "c0"
    assert by_id["c3"].empty_user_instruction_ja and by_id["c3"].is_template_instruction == "company introduction"
    for skipped in ("c2", "c3"):
        assert by_id[skipped].synthesized_assistant_responses == []
    good = by_id["c4"]
    assert len(good.synthesized_assistant_responses) == 2
    assert [a.preference_score for a in good.synthesized_response_scoring_annotations] == [7.0, 7.0]
    assert good.synthesized_assistant_responses_en and by_id["c1"].synthesized_assistant_responses_en is None
    # Unsafe: translated, never answered.
    unsafe = list(iter_synth_records(tmp_path / "out" / "unsafe"))
    assert [u.conversation_id for u in unsafe] == ["c90"]
    assert unsafe[0].translated_conversation and unsafe[0].synthesized_assistant_responses == []
    # Nothing internal leaks into the records.
    text = (tmp_path / "out" / "records" / "part-00000.jsonl").read_text()
    assert "distilabel_metadata" not in text and "Translate the following" not in text
    assert set(json.loads(text.splitlines()[0])) == set(SynthRecord.model_fields)
    info = RunInfo.model_validate_json((tmp_path / "out" / "run.json").read_text())
    assert info.pipeline == "fake" and info.fingerprint == result.fingerprint
    assert info.counts.instructions == 6 and info.counts.unsafe == 1 and info.counts.duplicate == 1
    assert info.tokens["generate"].completion_tokens > 0 and info.generator.backend == "fake"
    assert result.units_reused == {"translate": 0, "generate": 0, "judge": 0}
    # The steps' per-batch events reached the report: batches and busy time per LLM step.
    report = read_report(tmp_path / "out")
    assert {"translate", "generate", "judge"} <= {s.step for s in report.steps if s.batches >= 1}
    assert report.step("generate").busy_s > 0 and report.step("generate").span_s >= report.step("generate").busy_s
    assert report.gpus == 0
    n_calls = len(calls(log))
    # The same command again: every unit from the cache, no model call, same records.
    again = run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "out")
    assert len(calls(log)) == n_calls
    assert sum(again.units_generated.values()) == 0
    assert list(iter_synth_records(tmp_path / "out")) == records


UF_OK = (
    "#### Output for Text 1\\nType: 1\\nRationale: a\\nRating: 4\\nRationale: b\\n\\n"
    "#### Output for Text 2\\nType: None\\nRationale: c\\nRating: 2\\nRationale: d"
)
UF_NA = (
    "#### Output for Text 1\\nRating: 5\\nRationale: x\\n\\n#### Output for Text 2\\nRating: N/A\\nRationale: creative"
)
UF_PIPELINE = f"""\
name: uf
batch_size: 2
models:
  g: {{backend: fake, replies: ["回答です。"]}}
  t: {{backend: fake, replies: ["訳 {{last_line}}"]}}
  j: {{backend: fake, replies: ["{UF_OK}", "{UF_NA}", "I'm sorry, I can't rate these texts.", "Sorry."]}}
translate: {{model: t}}
generate: {{model: g, sampling: {{n: 2, max_tokens: 50}}}}
judge: {{mode: ultrafeedback, model: j, max_reasks: 1}}
"""


@pytest.mark.timeout(300)
def test_unreadable_judge_answers_are_reasked_then_recorded_and_counted(tmp_path: Path) -> None:
    # Each batch asks the four aspects of two rows; the scripted judge answers, in aspect order: ratings,
    # ratings with honesty's N/A, and two refusals. Re-asks go to truthfulness and helpfulness only.
    pipe = tmp_path / "uf.yaml"
    pipe.write_text(UF_PIPELINE)
    run_pipeline(pipe, input_dir=prepared(tmp_path), out_dir=tmp_path / "out")
    records = [r for r in iter_synth_records(tmp_path / "out") if r.synthesized_assistant_responses]
    assert len(records) == 4
    verdicts = [json.loads(a.judgement) for r in records for a in r.synthesized_response_scoring_annotations]
    assert [v["honesty"]["rating"] for v in verdicts].count("N/A") == 4  # one per row, never a failure
    failed = [(a, v) for v in verdicts for a in v if v[a]["rating"] is None]
    assert failed and all(
        v[a]["raw"] in ("I'm sorry, I can't rate these texts.", "Sorry.", UF_NA.replace("\\n", "\n"))
        for a, v in failed
    )
    assert all(v["instruction_following"]["rating"] in (2, 4) for v in verdicts)
    report = read_report(tmp_path / "out")
    judge_step = report.step("judge")
    # Per batch: 8 asks, 4 re-asks, 3 answers still unreadable (two batches with responses).
    assert (judge_step.requests, judge_step.reasks, judge_step.failures) == (24, 8, 6)
    info = RunInfo.model_validate_json((tmp_path / "out" / "run.json").read_text())
    assert info.tokens["judge"].reasks == 8 and info.tokens["judge"].failures == 6
    assert info.counts.judge_failures == 0  # every response kept a score from its readable aspects


@pytest.mark.timeout(300)
def test_select_runs_as_a_step_only_where_a_second_turn_reads_its_picks(tmp_path: Path) -> None:
    from lmsynth.pipeline.config import load_pipeline_config
    from lmsynth.pipeline.plan import step_stages

    pipe, _ = write_fake_pipeline(tmp_path)
    assert step_stages(load_pipeline_config(pipe)) == ["translate", "flags", "generate", "judge"]
    two = tmp_path / "two-turn.yaml"
    two.write_text(pipe.read_text() + "second_turn: {model: f}\n")
    assert step_stages(load_pipeline_config(two))[-2:] == ["select", "second_turn"]
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(3)])
    run_pipeline(two, input_dir=prep, out_dir=tmp_path / "out")
    records = list(iter_synth_records(tmp_path / "out"))
    assert [r.conversation_id for r in records] == ["c0", "c1", "c2"]
    for r in records:
        (conversation,) = r.synthesized_multiturn_conversation
        assert [m.role for m in conversation] == ["user", "assistant", "user", "assistant"]
        # The first answer is the selected best response (equal scores: the first one).
        assert conversation[1].content == r.synthesized_assistant_responses[0].content
