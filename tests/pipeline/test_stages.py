"""Translate cleaning, flags, generation, selection and the second turn, with a scripted model."""

from __future__ import annotations

import pytest

from lmsynth.pipeline.pipeline_row import JudgeOutput, PipelineRow, SelectOutput, TranslateOutput
from lmsynth.pipeline.stages.flags import mark_flags
from lmsynth.pipeline.stages.generate import EnglishResponses, GenerateConfig, generate
from lmsynth.pipeline.stages.second_turn import SecondTurnConfig, second_turn
from lmsynth.pipeline.stages.select import SelectConfig, best_of_n, dpo_pair, select
from lmsynth.pipeline.stages.translate import TranslateConfig, clean_translation, translate
from tests.pipeline.factories import fake, make_row


class TestTranslate:
    @pytest.mark.parametrize(
        ("raw", "clean"),
        [
            ("Here is the translation: こんにちは", "こんにちは"),
            ("Sure! Here's the Japanese translation:\nこんにちは", "こんにちは"),
            ("翻訳：こんにちは", "こんにちは"),
            ("以下は翻訳です。\n今日は晴れです。", "今日は晴れです。"),
            ("```\nこんにちは\n```", "こんにちは"),
            ("「こんにちは」", "こんにちは"),
            ('"こんにちは"', "こんにちは"),
            ("  こんにちは  ", "こんにちは"),
            ("「A」と「B」の違いは？", "「A」と「B」の違いは？"),
            ("Translation:", ""),
        ],
    )
    def test_clean_translation(self, raw: str, clean: str) -> None:
        assert clean_translation(raw) == clean

    def test_japanese_passes_through_and_english_is_translated(self) -> None:
        rows = [
            make_row(0),
            make_row(1, language="Japanese", instruction="日本語の質問"),
            make_row(2, instruction=" "),
        ]
        model = fake("Here is the translation: 質問0")
        out = translate(rows, model=model, config=TranslateConfig(model="m"))
        assert [o.instruction_ja for o in out] == ["質問0", "日本語の質問", ""]
        assert [o.translated for o in out] == [True, False, True]
        assert model.calls == 1  # only the English, non-empty one
        assert out[0].usage.requests == 1 and out[1].usage.requests == 0


class TestFlags:
    def test_empty_and_duplicates_point_to_first_in_input_order(self) -> None:
        rows = [make_row(2, ja="同じ"), make_row(0, ja="同じ"), make_row(1, ja=""), make_row(3, ja="別")]
        flags = mark_flags(rows)
        assert [f.duplicate_of for f in flags] == ["c0", None, None, None]
        assert [f.empty for f in flags] == [False, False, True, False]

    def test_unsafe_rows_are_flagged_apart(self) -> None:
        rows = [make_row(0, ja="同じ"), make_row(1, ja="同じ", flagged=True)]
        assert [f.duplicate_of for f in mark_flags(rows)] == [None, None]


class TestGenerate:
    def test_skips_empty_duplicate_and_flagged_and_flags_repetitions(self) -> None:
        ok = make_row(0, ja="質問")
        empty = make_row(1, ja="")
        dup = make_row(2, ja="質問").model_copy(update={"flags": ok.flags.model_copy(update={"duplicate_of": "c0"})})
        unsafe = make_row(3, ja="危険", flagged=True)
        jp = make_row(4, ja="日本語", language="Japanese")
        model = fake("short", "w " * 30)
        config = GenerateConfig(model="m", repetition_threshold=10, english=EnglishResponses(n=1))
        out = generate([ok, empty, dup, unsafe, jp], model=model, config=config)
        assert out[0].responses_ja and len(out[0].responses_ja) == 6
        assert out[0].repetition_flags == [False, True] * 3
        assert out[0].token_lengths == [1, 30] * 3
        assert [o.responses_ja for o in out[1:4]] == [[], [], []]
        assert out[0].responses_en is not None and len(out[0].responses_en) == 1
        assert out[4].responses_en is None  # Japanese source: no English responses
        assert out[3].responses_en is None  # flagged: never answered

    def test_default_threshold_is_spec_2000(self) -> None:
        assert GenerateConfig(model="m").repetition_threshold == 2000


class TestSelect:
    def test_best_of_n_ties_and_failures(self) -> None:
        assert best_of_n([7, 9, 9, None]) == 1
        assert best_of_n([None, None]) is None
        assert best_of_n([]) is None
        assert best_of_n([9, 8], repetition_flags=[True, False]) == 1
        assert best_of_n([9, 8], repetition_flags=[True, False], avoid_repetitions=False) == 0

    def test_dpo_pair_margin_and_failures(self) -> None:
        assert dpo_pair([5, None, 9, 2], margin=1) == (2, 3)
        assert dpo_pair([5, 5.5], margin=1) is None
        assert dpo_pair([None, 9], margin=0) is None
        assert dpo_pair([4, 4], margin=0) is None
        assert dpo_pair([2, 8, 2], margin=0) == (1, 2)

    def test_select_rows(self) -> None:
        row = make_row(0, ja="q", responses=["a", "b"]).model_copy(
            update={"judge": JudgeOutput(judgements=["x", "y"], scores=[3.0, 8.0])}
        )
        assert select([row], config=SelectConfig())[0] == SelectOutput(best=1, dpo_chosen=1, dpo_rejected=0)


class TestSecondTurn:
    def test_builds_two_turns_on_the_best_response(self) -> None:
        row = make_row(0, ja="質問", responses=["a", "best"]).model_copy(update={"select": SelectOutput(best=1)})
        none = make_row(1, ja="質問", responses=[]).model_copy(update={"select": SelectOutput(best=None)})
        out = second_turn([row, none], model=fake("次の質問", "答え"), config=SecondTurnConfig(model="m"))
        conv = [(m.role, m.content) for m in out[0].conversation]
        assert conv == [("user", "質問"), ("assistant", "best"), ("user", "次の質問"), ("assistant", "答え")]
        assert out[1].conversation is None

    def test_empty_follow_up_stays_single_turn_as_a_recorded_failure(self) -> None:
        row = make_row(0, ja="質問", responses=["best"]).model_copy(update={"select": SelectOutput(best=0)})
        out = second_turn([row], model=fake("Translation:"), config=SecondTurnConfig(model="m", max_reasks=2))
        assert [m.role for m in out[0].conversation] == ["user", "assistant"]
        assert out[0].failure == "Translation:"
        assert (out[0].usage.requests, out[0].usage.reasks, out[0].usage.failures) == (3, 2, 1)

    def test_unusable_turns_are_asked_again(self) -> None:
        row = make_row(0, ja="質問", responses=["best"]).model_copy(update={"select": SelectOutput(best=0)})
        # user turn: empty, then usable; answer: blank, then usable.
        out = second_turn([row], model=fake("", "次の質問", "  ", "答え"), config=SecondTurnConfig(model="m"))
        assert [m.content for m in out[0].conversation] == ["質問", "best", "次の質問", "答え"]
        assert out[0].failure is None and (out[0].usage.reasks, out[0].usage.failures) == (2, 0)

    def test_unusable_answer_leaves_the_row_single_turn(self) -> None:
        row = make_row(0, ja="質問", responses=["best"]).model_copy(update={"select": SelectOutput(best=0)})
        out = second_turn([row], model=fake("次の質問", ""), config=SecondTurnConfig(model="m", max_reasks=0))
        assert [m.role for m in out[0].conversation] == ["user", "assistant"]
        assert out[0].failure == "" and out[0].usage.failures == 1


def test_row_columns_round_trip() -> None:
    row = make_row(3, ja="質問", responses=["a"]).model_copy(
        update={"translate": TranslateOutput(instruction_ja="質問", translated=True)}
    )
    cols = row.to_columns()
    assert isinstance(cols["generate"], bytes) and "judge" not in cols
    assert PipelineRow.from_columns(cols) == row
