"""The record factories: valid, deterministic by seed, with the special cases the release must handle."""

from __future__ import annotations

from pathlib import Path

from lmsynth.io import read_jsonl
from lmsynth.records import InstructionRecord, SynthRecord, iter_synth_records
from lmsynth.testing import make_synth_record, write_run_dir


def test_shapes() -> None:
    v5, v3, v1 = (make_synth_record(shape=s, seed=1) for s in ("v0.5", "v0.3", "v0.1"))
    assert len(v5.synthesized_assistant_responses) == 10 and v5.synthesized_assistant_responses_en is None
    assert len(v1.synthesized_assistant_responses_en) == 1 and v1.synthesized_multiturn_conversation is None
    assert v3.synthesized_multiturn_conversation[0][0].content == v3.translated_conversation[0].content
    assert make_synth_record(n_responses=3, is_template_instruction="x").is_template_instruction == "x"


def test_run_dir_is_deterministic_and_has_special_cases(tmp_path: Path) -> None:
    write_run_dir(tmp_path / "a", 200, seed=3, unsafe_n=2, prepared=tmp_path / "p")
    write_run_dir(tmp_path / "b", 200, seed=3, unsafe_n=2)
    assert (tmp_path / "a/records/records-00000.jsonl").read_bytes() == (
        tmp_path / "b/records/records-00000.jsonl"
    ).read_bytes()
    recs = list(iter_synth_records(tmp_path / "a"))
    assert len(recs) == 200 and len({r.conversation_id for r in recs}) == 200
    empty = [r for r in recs if r.empty_user_instruction_ja]
    dup = [r for r in recs if r.duplicate_user_instruction_ja]
    assert empty and dup and all(not r.synthesized_assistant_responses for r in empty + dup)
    anns = [a for r in recs for a in r.synthesized_response_scoring_annotations]
    assert any(a.preference_score is None for a in anns) and any(a.repetition_flag for a in anns)
    assert len(list(read_jsonl(tmp_path / "a/unsafe/records-00000.jsonl", SynthRecord))) == 2
    assert len(list(read_jsonl(tmp_path / "p/instructions.jsonl", InstructionRecord))) == 200
