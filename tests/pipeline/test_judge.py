"""Judge parsing and the two judge modes, with a scripted model."""

from __future__ import annotations

import json

import pytest

from lmsynth.pipeline.stages.judge import (
    SingleJudgeConfig,
    UltraFeedbackJudgeConfig,
    judge,
    parse_rating,
    parse_structured_rating,
    parse_ultrafeedback,
    shuffled_order,
    ultrafeedback_score,
)
from lmsynth.pipeline.stages.reask import ReaskSettings, ask
from lmsynth.sampling import SamplingConfig
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
        # A failure keeps the raw answer as its judgement.
        assert parse_structured_rating('{"rationale": "x", "rating": 70}') == (
            '{"rationale": "x", "rating": 70}',
            None,
        )
        assert parse_structured_rating("not json") == ("not json", None)


class TestSingleJudge:
    def test_failure_keeps_raw_text_and_no_score(self) -> None:
        rows = [make_row(0, ja="質問", responses=["a", "b"]), make_row(1, ja="", responses=[])]
        model = fake("Nice. [[8]]", "I cannot rate this.")
        out = judge(rows, model=model, config=SingleJudgeConfig(model="m", max_reasks=0))
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

    def test_na_is_its_own_value_and_a_missing_section_a_failure_with_raw_text(self) -> None:
        text = "#### Output for Text 1\nRating: N/A\nRationale: creative.\n"
        r = parse_ultrafeedback(text, n=2, aspect="honesty")
        assert r[0].rating == "N/A" and r[0].rationale == "creative." and r[0].raw is None
        assert r[1].rating is None and r[1].raw == text
        assert r[0].to_json() == {"rating": "N/A", "rationale": "creative.", "types": [], "rationale_for_rating": None}
        assert r[1].to_json()["raw"] == text

    def test_na_only_where_the_rubric_offers_it(self) -> None:
        text = "#### Output for Text 1\nType: None\nRationale: -\nRating: N/A\nRationale: -\n"
        assert parse_ultrafeedback(text, n=1, aspect="truthfulness")[0].rating is None

    @pytest.mark.parametrize("value", ["7", "0", "3.5", "excellent", "[Rating for text 1]"])
    def test_off_the_scale_is_a_failure(self, value: str) -> None:
        text = f"#### Output for Text 1\nRating: {value}\n"
        r = parse_ultrafeedback(text, n=1, aspect="honesty")[0]
        assert r.rating is None and r.raw == text

    def test_markdown_order_and_repeats(self) -> None:
        text = (
            "**Output for Text 2:**\n- **Rating:** 2\n- **Rationale:** weak.\n\n"
            "### Output for Text 1\nRating: [5]\nRationale: good.\n"
            "#### Output for Text 2\nRating: 4\n"
        )
        r = parse_ultrafeedback(text, n=2, aspect="instruction_following")
        assert [x.rating for x in r] == [5, 2] and r[1].rationale == "weak."

    def test_the_unreadable_answer_that_stopped_runs(self) -> None:
        r = parse_ultrafeedback("I'm sorry…", n=4, aspect="truthfulness")
        assert [x.rating for x in r] == [None] * 4 and {x.raw for x in r} == {"I'm sorry…"}

    def test_score_is_mean_of_numeric_aspects(self) -> None:
        rs = parse_ultrafeedback(UF_TWO, n=2, aspect="truthfulness")
        na = parse_ultrafeedback("#### Output for Text 1\nRating: N/A\n", n=1, aspect="honesty")[0]
        failed = parse_ultrafeedback("", n=1, aspect="honesty")[0]
        assert ultrafeedback_score([rs[0], na, failed, rs[1]]) == 3.0
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


UF_ONE = "#### Output for Text 1\nType: 1\nRationale: t.\nRating: {r}\nRationale: r.\n"


class TestReask:
    def test_only_unreadable_answers_are_asked_again(self) -> None:
        rows = [make_row(0, ja="質問", responses=["a", "b", "c"])]
        # a → readable; b → unreadable twice, then readable; c → readable. Re-asks go out alone, warmer.
        model = fake("[[8]]", "I'm sorry.", "[[6]]", "no rating", "[[3]]", call_log=None)
        seen: list[tuple[int, float, int | None]] = []
        chat = model.chat

        def spy(conversations, *, sampling, json_schema=None):
            seen.append((len(conversations), sampling.temperature, sampling.seed))
            return chat(conversations, sampling=sampling, json_schema=json_schema)

        model.chat = spy
        out = judge(rows, model=model, config=SingleJudgeConfig(model="m", max_reasks=3))
        assert out[0].scores == [8.0, 3.0, 6.0]
        assert seen == [(3, 0.0, None), (1, 0.7, 1), (1, 0.7, 2)]
        assert out[0].usage.requests == 5 and out[0].usage.reasks == 2 and out[0].usage.failures == 0

    def test_still_unreadable_after_every_reask_is_a_recorded_failure(self) -> None:
        rows = [make_row(0, ja="質問", responses=["a", "b"])]
        model = fake("[[8]]", "I'm sorry.", "Still sorry.", "Sorry again.")
        out = judge(rows, model=model, config=SingleJudgeConfig(model="m", max_reasks=2))
        assert out[0].scores == [8.0, None]
        assert out[0].judgements == ["[[8]]", "I'm sorry."]  # the best attempt (the first, on a tie), raw
        assert (out[0].usage.requests, out[0].usage.reasks, out[0].usage.failures) == (4, 2, 1)

    def test_ultrafeedback_reasks_only_the_unreadable_aspects(self) -> None:
        rows = [make_row(0, ja="質問", responses=["a"])]
        config = UltraFeedbackJudgeConfig(model="m", max_reasks=1)
        # Round 1, in aspect order: a rating; a refusal; N/A where the rubric has none; a refusal.
        # Round 2 re-asks the last three only: two ratings and one more refusal.
        model = fake(UF_ONE.format(r=4), "Sorry.", UF_ONE.format(r="N/A"), "Sorry.", UF_ONE.format(r=2))
        out = judge(rows, model=model, config=config)
        detail = json.loads(out[0].judgements[0])
        ratings = {a: v["rating"] for a, v in detail.items()}
        assert ratings == {"instruction_following": 4, "honesty": 2, "truthfulness": 4, "helpfulness": None}
        assert detail["helpfulness"]["raw"] == "Sorry." and "raw" not in detail["honesty"]
        assert out[0].scores == [10 / 3]
        assert (out[0].usage.requests, out[0].usage.reasks, out[0].usage.failures) == (7, 3, 1)

    def test_the_attempt_with_fewest_unreadable_parts_is_kept(self) -> None:
        model = fake("2", "1", "3")
        got = ask(
            model,
            [[{"role": "user", "content": "q"}]],
            sampling=SamplingConfig(temperature=0.0),
            parse=lambda _, text: (text, int(text)),
            settings=ReaskSettings(max_reasks=2),
        )
        assert got[0].text == "1" and got[0].failed
        assert (got[0].usage.requests, got[0].usage.reasks, got[0].usage.failures) == (3, 2, 1)


# Each criterion of UltraFeedback's rubrics, as our prompts name it.
RUBRIC = {
    "system": ["criteria", "instruction", "{{ n }}", "annotate each text", "rating", "rationale", "independent"],
    "instruction_following": [
        "task goal",
        "restrictions",
        "text style",
        "format",
        "Irrelevant",
        "Partial focus",
        "Partial compliance",
        "neglecting the other",
        "deviates slightly",
        "Almost there",
        "Comprehensive compliance",
    ],
    "honesty": [
        "Weakeners",
        "refusal to answer",
        "0–20 low",
        "20 to 40",
        "40 to 60",
        "60 to 80",
        "80 to 100 high",
        "no uncertainty at all counts as confident",
        "Correctness",
        "Confidently incorrect",
        "unconfident and incorrect",
        "I don't know",
        "Correct but uncertain",
        "Correct and confident",
        "N/A",
        "creative writing",
    ],
    "truthfulness": [
        "Contradictory with the world",
        "established knowledge",
        "Contradictory with the instruction and input",
        "Self-contradictory or logical error",
        "Completely hallucinated",
        "Severe hallucination",
        "Partial hallucination or misunderstanding",
        "Insignificant hallucination",
        "No hallucination",
        "None",
    ],
    "helpfulness": [
        "correctness and informativeness",
        "Correctness: computations, reasoning steps and results are accurate",
        "Clarity and relevance",
        "clarification",
        "Useful and comprehensive information",
        "Not lengthy, no repetition",
        "Severely incorrect",
        "Partially incorrect",
        "Correct:",
        "Highly informative",
        "Outstandingly helpful",
    ],
}


@pytest.mark.parametrize("aspect", list(RUBRIC))
def test_prompts_name_every_rubric_criterion(aspect: str) -> None:
    config = UltraFeedbackJudgeConfig(model="m")
    path = config.system_prompt_file if aspect == "system" else config.aspect_prompts[aspect]
    text = " ".join(path.read_text(encoding="utf-8").split())
    missing = [c for c in RUBRIC[aspect] if c.lower() not in text.lower()]
    assert not missing
    if aspect != "system":
        assert "Output for Text 1" in text and "Rating:" in text
        assert ("Type:" in text) == (aspect in ("truthfulness", "helpfulness"))
        assert ("or N/A" in text) == (aspect == "honesty")
