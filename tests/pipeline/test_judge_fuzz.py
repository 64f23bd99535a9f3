"""Property tests: the judge parsers and the second-turn parser read any answer without raising.

Answers are generated from a seeded grammar (so the ratings they state are known), then mangled: truncated
at every position, sections shuffled and repeated, Markdown decoration, numbers off the scale, other
languages, random noise. The properties: no exception; a rating only where the text states it; the raw
answer kept for every failure; the generated answers read back exactly.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest

from lmsynth.llm import Completion
from lmsynth.pipeline.pipeline_row import SelectOutput
from lmsynth.pipeline.stages.judge import (
    ASPECTS,
    NA,
    NA_ASPECTS,
    SingleJudgeConfig,
    UltraFeedbackJudgeConfig,
    judge,
    parse_rating,
    parse_structured_rating,
    parse_ultrafeedback,
)
from lmsynth.pipeline.stages.second_turn import SecondTurnConfig, parse_answer, parse_user_turn, second_turn
from tests.pipeline.factories import make_row


SEED = 20261201
WORDS = [
    "the answer",
    "is mostly correct",
    "ignores the format",
    "回答は正確です",
    "指示に従っていない",
    "答案基本正确",
    "الإجابة صحيحة",
    "😀",
    "**bold**",
    "_emph_",
    "`code`",
    "[link](x)",
    "see text two",
    "well structured",
    "» quote «",
]
NOISE = list("#*:：-_>[]()/\n \t0123456789NnAa") + [
    "Rating",
    "Rationale",
    "Type",
    "Output for Text",
    "N/A",
    "[[",
    "]]",
]
HEADERS = [
    "#### Output for Text {k}",
    "### Output for Text {k}:",
    "**Output for Text {k}**",
    "Output for Text {k}",
    "##### output for text {k}",
    "#### **Output for Text {k}:**",
]
RATING_LINES = ["Rating: {v}", "**Rating:** {v}", "- Rating: {v}", "Rating: **{v}**", "rating：{v}", "Rating: [{v}]"]


@dataclass
class Generated:
    text: str
    truth: list  # per text: int, "N/A" or None
    written: list[list[str]]  # per text: every rating value written (truncation may cut one short)


def ascii_digits(text: str) -> str:
    """Full-width and other decimal digits as ASCII (the parsers read any Unicode decimal digit)."""
    return "".join(str(int(c)) if c.isdecimal() else c for c in text)


def prose(rng: random.Random, k: int = 4) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, k)))


def noise(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(NOISE) for _ in range(length))


def rating_value(rng: random.Random, aspect: str) -> tuple[str, object]:
    """A written rating value and what it should read as."""
    roll = rng.random()
    if roll < 0.6:
        v = rng.randint(1, 5)
        return rng.choice([str(v), f"{v} (fine)", f"{v}/5", f"{v}."]), v
    if roll < 0.7:
        return rng.choice(["N/A", "n/a", "N / A"]), NA if aspect in NA_ASPECTS else None
    if roll < 0.85:
        return str(rng.choice([0, 6, 7, 10, 42, -1, 99999])), None
    return rng.choice(["excellent", "3.5", "four", "", "[Rating]", "５５"]), None


def uf_answer(rng: random.Random, n: int, aspect: str) -> Generated:
    typed = aspect in ("truthfulness", "helpfulness")
    truth: list = [None] * n
    written: list[list[str]] = [[] for _ in range(n)]
    blocks = []
    ks = list(range(1, n + 1))
    rng.shuffle(ks) if rng.random() < 0.3 else None
    ks = [k for k in ks if rng.random() > 0.1]  # a missing section
    if ks and rng.random() < 0.2:
        ks.append(rng.choice(ks))  # a repeated header: the first readable copy counts
    if rng.random() < 0.1:
        ks.append(rng.choice([0, n + 1, 1000]))  # a header for no text
    for k in ks:
        value, reads_as = rating_value(rng, aspect)
        lines = [rng.choice(HEADERS).format(k=k)]
        if typed:
            lines += [f"Type: {rng.choice(['1, 3', 'None', '[2]', '1,2,3', '4, 1'])}", f"Rationale: {prose(rng)}"]
        if rng.random() > 0.05:
            lines.append(rng.choice(RATING_LINES).format(v=value))
        else:
            reads_as = None
        lines.append(f"Rationale: {prose(rng)}")
        if 1 <= k <= n:
            written[k - 1].append(value)
            if truth[k - 1] is None:
                truth[k - 1] = reads_as
        blocks.append("\n".join(lines))
    sep = rng.choice(["\n\n", "\n", "\n---\n", "\n\n\n"])
    return Generated(prose(rng, 2) + "\n\n" + sep.join(blocks), truth, written)


def single_answer(rng: random.Random) -> tuple[str, float | None, str]:
    v = rng.choice([0, 3, 7, 8, 10, 7.5, 11, -1, 42])
    fmt = rng.choice(["Rating: [[{v}]]", "[[{v}]]", "Rating: {v}", "rating： {v}", "I give it {v}/10."])
    written = f"{v:g}"
    truth = float(v) if 0 <= v <= 10 else None
    return f"{prose(rng)}\n{fmt.format(v=written)}", truth, written


def assert_ultrafeedback_answer(text: str, n: int, aspect: str) -> list:
    parsed = parse_ultrafeedback(text, n=n, aspect=aspect)
    assert len(parsed) == n
    for r in parsed:
        if r.rating is None:
            assert r.raw == text  # every failure keeps the raw answer
        elif r.rating == NA:
            assert aspect in NA_ASPECTS and r.raw is None
        else:
            assert 1 <= r.rating <= 5 and r.raw is None
            assert str(r.rating) in ascii_digits(text)
        assert all(t in (1, 2, 3) for t in r.types)
    return parsed


@pytest.mark.timeout(60)
def test_ultrafeedback_generated_answers_read_back_exactly_and_survive_truncation() -> None:
    rng = random.Random(SEED)
    checked = 0
    for i in range(1500):
        aspect = rng.choice(ASPECTS)
        n = rng.randint(1, 6)
        g = uf_answer(rng, n, aspect)
        parsed = assert_ultrafeedback_answer(g.text, n, aspect)
        assert [r.rating for r in parsed] == g.truth, g.text
        checked += 1
        if i % 50 == 0:  # every cut position of some answers
            for cut in range(len(g.text)):
                parsed = assert_ultrafeedback_answer(g.text[:cut], n, aspect)
                for k, r in enumerate(parsed):
                    cut_short = any(ascii_digits(w).startswith(str(r.rating)) for w in g.written[k])
                    assert r.rating is None or r.rating == g.truth[k] or cut_short, (g.text[:cut], k)
                checked += 1
    assert checked > 5000


@pytest.mark.timeout(60)
def test_ultrafeedback_parser_survives_noise_prose_and_empty_answers() -> None:
    rng = random.Random(SEED + 1)
    fixed = [
        "",
        " ",
        "\n\n",
        "I'm sorry, but I can't help with that.",
        "申し訳ありませんが、評価できません。",
        "Rating: 4",
    ]
    texts = fixed + [noise(rng, rng.randint(1, 200)) for _ in range(2500)]
    texts += [prose(rng, 30) for _ in range(300)]
    for text in texts:
        for aspect in ("honesty", "truthfulness"):
            n = rng.randint(1, 4)
            parsed = assert_ultrafeedback_answer(text, n, aspect)
            if "Output for Text" not in text and (n > 1 or "Rating" not in text):
                assert all(r.rating is None for r in parsed)
    # The crash of the first release: an answer without any section header.
    assert [r.rating for r in parse_ultrafeedback("I'm sorry…", n=4, aspect="truthfulness")] == [None] * 4


@pytest.mark.timeout(60)
def test_single_parsers_read_stated_ratings_only() -> None:
    rng = random.Random(SEED + 2)
    for i in range(2000):
        text, truth, written = single_answer(rng)
        assert parse_rating(text) == truth, text
        if i % 40 == 0:
            for cut in range(len(text)):
                got = parse_rating(text[:cut])
                assert got is None or got == truth or written.startswith(f"{got:g}"), text[:cut]
        doc = json.dumps({"rationale": prose(rng), "rating": truth if truth is not None else 11})
        judgement, score = parse_structured_rating(doc)
        assert score == truth and (judgement == doc if truth is None else judgement == json.loads(doc)["rationale"])
        for cut in range(0, len(doc), 7):
            judgement, score = parse_structured_rating(doc[:cut])
            assert score is None and judgement == doc[:cut]  # a cut JSON never parses; the raw text stays
    odd = ["[" * 100_000, '{"rating": true}', '{"rating": [7]}', '{"rating": "nan"}', "[[" + "9" * 5000 + "]]"]
    for text in [*odd, *(noise(rng, rng.randint(0, 120)) for _ in range(2500))]:
        score = parse_rating(text)
        assert score is None or (0 <= score <= 10 and f"{score:g}"[0] in ascii_digits(text))
        judgement, score = parse_structured_rating(text)
        assert score is None and judgement == text or 0 <= score <= 10


@pytest.mark.timeout(60)
def test_second_turn_parsers_never_raise_and_flag_empty_turns() -> None:
    rng = random.Random(SEED + 3)
    leads = ["", "Sure! Here is the translation: ", "翻訳：", "```\n", '"', "「", "Here's the Japanese translation:\n"]
    for _ in range(3000):
        body = rng.choice([prose(rng, 6), noise(rng, rng.randint(0, 80)), "", "  \n "])
        text = rng.choice(leads) + body
        turn, unread = parse_user_turn(text)
        assert unread == (not turn) and turn == turn.strip()
        answer, unread = parse_answer(text)
        assert unread == (not answer) and answer == text.strip()
    assert parse_user_turn("Translation:") == ("", 1)
    assert parse_user_turn("「次の質問は？」") == ("次の質問は？", 0)


class RandomJudge:
    """A model whose every answer is drawn from the generators above (readable, mangled or noise)."""

    model_id, revision = "random", None

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def chat(self, conversations, *, sampling, json_schema=None):
        out = []
        for conv in conversations:
            n = max(conv[-1]["content"].count("</text "), 1)
            roll = self.rng.random()
            if roll < 0.4:
                text = uf_answer(self.rng, n, self.rng.choice(ASPECTS)).text
            elif roll < 0.6:
                text = single_answer(self.rng)[0]
            elif roll < 0.8:
                text = noise(self.rng, self.rng.randint(0, 100))
            else:
                text = prose(self.rng, 8)
            out.append([Completion(text=text[: self.rng.randint(0, len(text))], prompt_tokens=1, completion_tokens=1)])
        return out


@pytest.mark.timeout(60)
def test_stages_record_every_unreadable_answer_instead_of_failing() -> None:
    rows = [make_row(i, ja=f"質問{i}", responses=[f"r{j}" for j in range(1 + i % 4)]) for i in range(40)]
    for config in (
        UltraFeedbackJudgeConfig(model="m", max_reasks=2),
        SingleJudgeConfig(model="m", max_reasks=2),
        SingleJudgeConfig(model="m", max_reasks=0, structured_output=True),
    ):
        out = judge(rows, model=RandomJudge(SEED), config=config)
        failures = sum(o.usage.failures for o in out)
        assert failures > 0 and sum(o.usage.reasks for o in out) > 0 or config.max_reasks == 0
        for row, o in zip(rows, out, strict=True):
            assert len(o.scores) == len(o.judgements) == len(row.generate.responses_ja)
            if isinstance(config, UltraFeedbackJudgeConfig):
                for judgement in o.judgements:
                    for verdict in json.loads(judgement).values():
                        assert verdict["rating"] is not None or "raw" in verdict
    picked = [r.model_copy(update={"select": SelectOutput(best=0)}) for r in rows]
    out = second_turn(picked, model=RandomJudge(SEED), config=SecondTurnConfig(model="m", max_reasks=1))
    assert all(o.conversation for o in out)
    assert all((o.failure is None) == (len(o.conversation) == 4) for o in out)
