"""Judge parsing and the two judge modes, with a scripted model."""

from __future__ import annotations

import json

import pytest

from lmsynth.pipeline.judge import (
    SingleJudgeConfig,
    UltraFeedbackJudgeConfig,
    judge,
    parse_rating,
    parse_structured_rating,
    parse_ultrafeedback,
    shuffled_order,
    ultrafeedback_score,
)
from tests.pipeline.factories import fake, make_row


class TestParseRating:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Good answer. Rating: [[8]]", 8.0),
            ("[[ 7.5 ]]", 7.5),
            ("Format is [[rating]]; my verdict: [[3]]", 3.0),
            ("Rating: 8", 8.0),
            ("rating： 6", 6.0),
            ("I give it 9/10.", 9.0),
            ("[[0]]", 0.0),
            ("[[10]]", 10.0),
        ],
    )
    def test_reads_the_usual_formats(self, text: str, expected: float) -> None:
        assert parse_rating(text) == expected

    @pytest.mark.parametrize("text", ["[[11]]", "[[-1]]", "Rating: 42", "no rating here", "", "[[rating]]"])
    def test_out_of_range_or_missing_is_none(self, text: str) -> None:
        assert parse_rating(text) is None

    def test_bracketed_rating_wins_over_looser_forms(self) -> None:
        assert parse_rating("Rating: 2 ... final [[9]]") == 9.0

    def test_structured_rating(self) -> None:
        assert parse_structured_rating('{"rationale": "fine", "rating": 7}') == ("fine", 7.0)
        assert parse_structured_rating('{"rationale": "x", "rating": 70}') == ("x", None)
        assert parse_structured_rating("not json") == ("not json", None)


class TestSingleJudge:
    def test_failure_keeps_raw_text_and_no_score(self) -> None:
        rows = [make_row(0, ja="質問", responses=["a", "b"]), make_row(1, ja="", responses=[])]
        model = fake("Nice. [[8]]", "I cannot rate this.")
        out = judge(rows, model=model, config=SingleJudgeConfig(model="m"))
        assert out[0].scores == [8.0, None]
        assert out[0].judgements == ["Nice. [[8]]", "I cannot rate this."]
        assert out[1].scores == [] and out[1].judgements == []
        assert out[0].usage.requests == 2

    def test_structured_output_passes_schema(self) -> None:
        seen = {}

        class Spy:
            model_id, revision = "spy", None

            def chat(self, conversations, *, sampling, json_schema=None):
                seen["schema"] = json_schema
                return [
                    [fake('{"rationale": "ok", "rating": 6}').chat([c], sampling=sampling)[0][0]]
                    for c in conversations
                ]

        rows = [make_row(0, ja="質問", responses=["a"])]
        out = judge(rows, model=Spy(), config=SingleJudgeConfig(model="m", structured_output=True))
        assert seen["schema"]["required"] == ["rationale", "rating"]
        assert out[0].scores == [6.0] and out[0].judgements == ["ok"]


UF_TWO = """#### Output for Text 1
Type: [1, 3]
Rationale: mixed.
Rating: 4
Rationale: mostly right.

#### Output for Text 2
Type: None
Rationale: none.
Rating: 2
Rationale: weak.
"""


class TestUltraFeedback:
    def test_parse_keeps_every_type_id_and_second_rationale(self) -> None:
        r = parse_ultrafeedback(UF_TWO, n=2, aspect="truthfulness")
        assert [x.rating for x in r] == [4, 2]
        assert r[0].types == [1, 3] and r[1].types == []
        assert r[0].rationale == "mixed." and r[0].rationale_for_rating == "mostly right."

    def test_na_and_missing_sections_are_failures(self) -> None:
        text = "#### Output for Text 1\nRating: N/A\nRationale: creative.\n"
        r = parse_ultrafeedback(text, n=2, aspect="honesty")
        assert r[0].rating is None and r[0].rationale == "creative."
        assert r[1].rating is None

    def test_out_of_range_is_a_failure(self) -> None:
        assert parse_ultrafeedback("#### Output for Text 1\nRating: 7\n", n=1, aspect="honesty")[0].rating is None

    def test_score_is_mean_of_available_aspects(self) -> None:
        rs = parse_ultrafeedback(UF_TWO, n=2, aspect="truthfulness")
        na = parse_ultrafeedback("#### Output for Text 1\nRating: N/A\n", n=1, aspect="honesty")[0]
        assert ultrafeedback_score([rs[0], na, rs[1]]) == 3.0
        assert ultrafeedback_score([na]) is None

    def test_shuffled_order_is_deterministic_permutation(self) -> None:
        a = shuffled_order(6, key="c1:honesty", seed=0)
        assert a == shuffled_order(6, key="c1:honesty", seed=0)
        assert sorted(a) == list(range(6))
        assert any(shuffled_order(6, key=f"c{i}:honesty", seed=0) != list(range(6)) for i in range(5))

    def test_ratings_are_mapped_back_to_original_order(self) -> None:
        responses = ["r0", "r1", "r2"]
        row = make_row(0, ja="質問", responses=responses)

        class ByText:
            """Rates each text by its own number, so a mapping error shows."""

            model_id, revision = "bytext", None

            def chat(self, conversations, *, sampling, json_schema=None):
                from lmsynth.llm import Completion

                out = []
                for conv in conversations:
                    user = conv[-1]["content"]
                    shown = [t for t in ("r0", "r1", "r2") if f">\n{t}\n<" in user]
                    shown.sort(key=user.index)
                    body = "".join(
                        f"#### Output for Text {k + 1}\nRating: {int(t[1]) + 1}\nRationale: {t}\n\n"
                        for k, t in enumerate(shown)
                    )
                    out.append([Completion(text=body, prompt_tokens=1, completion_tokens=1)])
                return out

        out = judge([row], model=ByText(), config=UltraFeedbackJudgeConfig(model="m"))
        assert out[0].scores == [1.0, 2.0, 3.0]
        detail = json.loads(out[0].judgements[2])
        assert set(detail) == {"instruction_following", "honesty", "truthfulness", "helpfulness"}
        assert detail["honesty"]["rationale"] == "r2"
