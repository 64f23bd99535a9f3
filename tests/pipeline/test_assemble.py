"""Generated text never carries the gated instruction verbatim into a SynthRecord."""

from __future__ import annotations

import json

from lmsynth.pipeline.output.assemble import to_synth_record
from lmsynth.pipeline.pipeline_row import GenerateOutput, JudgeOutput, PipelineRow, TranslateOutput
from lmsynth.records import QUOTE_PLACEHOLDER, InstructionRecord, redact_quotes


EN = "Write a short poem about the autumn leaves falling in the park."
JA = "公園に落ちる秋の葉についての短い詩を書いてください。"


def test_redact_quotes_replaces_long_quotes_only() -> None:
    assert redact_quotes(f"You asked: {EN} Here it is.", [EN]) == f"You asked: {QUOTE_PLACEHOLDER} Here it is."
    assert redact_quotes("hi there, hi", ["hi"]) == "hi there, hi"  # too short to be a leak


def test_responses_judgements_and_en_answers_are_redacted() -> None:
    row = PipelineRow(
        row_index=0,
        record=InstructionRecord(conversation_id="c0", language="English", instruction=EN, redacted=False),
        translate=TranslateOutput(instruction_ja=JA, translated=True),
        generate=GenerateOutput(
            responses_ja=[f"{JA}\n秋の葉", "落ち葉"],
            token_lengths=[10, 3],
            repetition_flags=[False, False],
            responses_en=[f'"{EN}" Leaves fall.'],
        ),
        judge=JudgeOutput(judgements=[f"The question was: {EN}", "ok"], scores=[6.0, 3.0]),
    )
    rec = to_synth_record(row, english=True, multiturn=False)
    assert rec.translated_conversation[0].content == JA  # the gated field keeps it (encrypted by the release)
    assert rec.synthesized_assistant_responses[0].content == f"{QUOTE_PLACEHOLDER}\n秋の葉"
    assert rec.synthesized_assistant_responses_en[0].content == f'"{QUOTE_PLACEHOLDER}" Leaves fall.'
    assert rec.synthesized_response_scoring_annotations[0].judgement == f"The question was: {QUOTE_PLACEHOLDER}"
    assert rec.synthesized_response_scoring_annotations[1].preference_score == 3.0


def test_json_judgements_are_redacted_inside_their_strings() -> None:
    # A raw judge answer that echoes a multi-line instruction: JSON escapes the newline, so only a
    # string-by-string redaction finds the quote.
    ja = "次の文章を要約してください。\n長い文章がここに続きます。"
    raw = f"I'm sorry, I can't rate answers to: {ja}"
    verdict = {"honesty": {"rating": None, "rationale": "", "types": [], "rationale_for_rating": None, "raw": raw}}
    row = PipelineRow(
        row_index=0,
        record=InstructionRecord(conversation_id="c0", language="Japanese", instruction=ja, redacted=False),
        translate=TranslateOutput(instruction_ja=ja, translated=False),
        generate=GenerateOutput(responses_ja=["a"], token_lengths=[1], repetition_flags=[False]),
        judge=JudgeOutput(judgements=[json.dumps(verdict, ensure_ascii=False)], scores=[None]),
    )
    judgement = to_synth_record(row, english=False, multiturn=False).synthesized_response_scoring_annotations[0]
    assert (
        json.loads(judgement.judgement)["honesty"]["raw"] == f"I'm sorry, I can't rate answers to: {QUOTE_PLACEHOLDER}"
    )
    assert "要約" not in judgement.judgement
