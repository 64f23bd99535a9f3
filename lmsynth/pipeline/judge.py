"""Stage 4: score every Japanese response, in one of two modes.

`single` is the original release's judge: MT-Bench-style single-answer grading on a 0–10 scale, the judge
writes a rationale and a rating like `[[8]]`. `ultrafeedback` rates all responses of an instruction together
on four aspects (1–5, honesty may be N/A), in a shuffled order mapped back, and scores each response by the
mean of its available aspect ratings. A rating that cannot be read is a recorded failure (score None, the
raw text kept), never a guess.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.llm import ChatModel, Completion, SamplingConfig
from lmsynth.pipeline.prompts import PromptPath, default_prompt, read_prompt, render
from lmsynth.pipeline.rows import JudgeOutput, PipelineRow, Usage


JUDGE_SAMPLING = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=1024)
ASPECTS: tuple[str, ...] = ("instruction_following", "honesty", "truthfulness", "helpfulness")
# Aspects whose answers carry `Type` ids and a second rationale (UltraFeedback's templates).
TYPED_ASPECTS = frozenset({"truthfulness", "helpfulness"})
# A bounded rationale keeps the JSON closed within `max_tokens`, so small judges still yield a rating.
RATIONALE_MAX_CHARS = 400


def rationale_rating_schema(low: float, high: float) -> dict:
    """JSON schema of a structured single-answer judgement: a short rationale and an integer rating in range."""
    return {
        "type": "object",
        "properties": {
            "rationale": {"type": "string", "maxLength": RATIONALE_MAX_CHARS},
            "rating": {"type": "integer", "minimum": int(low), "maximum": int(high)},
        },
        "required": ["rationale", "rating"],
    }


class SingleJudgeConfig(StrictModel):
    """MT-Bench-style single-answer grading, 0–10."""

    mode: Literal["single"] = "single"
    model: str = Field(min_length=1, description="A key of the pipeline's `models`.")
    prompt: PromptPath = Field(default_factory=lambda: default_prompt("judge_single.txt"))
    sampling: SamplingConfig = JUDGE_SAMPLING
    min_score: float = 0.0
    max_score: float = 10.0
    structured_output: bool = Field(False, description="Ask for JSON {rationale, rating} via structured output.")


class UltraFeedbackJudgeConfig(StrictModel):
    """UltraFeedback's four aspects, 1–5 each, all responses of an instruction in one shuffled prompt."""

    mode: Literal["ultrafeedback"] = "ultrafeedback"
    model: str = Field(min_length=1, description="A key of the pipeline's `models`.")
    system_prompt_file: PromptPath = Field(default_factory=lambda: default_prompt("ultrafeedback/system.txt"))
    aspect_prompts: dict[str, PromptPath] = Field(
        default_factory=lambda: {a: default_prompt(f"ultrafeedback/{a}.txt") for a in ASPECTS}
    )
    sampling: SamplingConfig = JUDGE_SAMPLING
    shuffle_seed: int = 0


JudgeConfig = Annotated[SingleJudgeConfig | UltraFeedbackJudgeConfig, Field(discriminator="mode")]


class AspectRating(StrictModel):
    """One aspect's verdict on one response."""

    rating: int | None
    rationale: str = ""
    types: list[int] = Field(default_factory=list)
    rationale_for_rating: str | None = None


def parse_rating(text: str, *, low: float = 0.0, high: float = 10.0) -> float | None:
    """Read a 0–10 rating from judge text: `[[8]]`, `Rating: 8`, `8/10`; out of range or missing → None.

    The last `[[x]]` wins (judges sometimes quote the format first); the looser forms are tried only when
    there is no bracketed rating.
    """
    for pattern in _RATING_PATTERNS:
        matches = pattern.findall(text or "")
        if matches:
            value = float(matches[-1])
            return value if low <= value <= high else None
    return None


def parse_structured_rating(text: str, *, low: float = 0.0, high: float = 10.0) -> tuple[str, float | None]:
    """Read `{rationale, rating}` JSON; anything unreadable is a failure with the raw text as judgement."""
    try:
        data = json.loads(text)
        rating = float(data["rating"])
        rationale = str(data.get("rationale", ""))
    except (ValueError, KeyError, TypeError):
        return text, None
    return rationale, (rating if low <= rating <= high else None)


def build_single_messages(question: str, answer: str, *, template: str) -> list[dict[str, str]]:
    """The chat that grades one answer."""
    return [{"role": "user", "content": render(template, question=question, answer=answer)}]


def shuffled_order(n: int, *, key: str, seed: int) -> list[int]:
    """A deterministic permutation: position k of the prompt shows response `order[k]`."""
    order = list(range(n))
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def parse_ultrafeedback(text: str, *, n: int, aspect: str) -> list[AspectRating]:
    """Parse one aspect's answer for `n` texts (in prompt order); a missing or bad section is a failure."""
    sections = _split_sections(text, n)
    return [_parse_section(s, aspect) for s in sections]


def ultrafeedback_score(ratings: Sequence[AspectRating]) -> float | None:
    """Fine-grained score: the mean of the available aspect ratings (N/A and failures excluded)."""
    values = [r.rating for r in ratings if r.rating is not None]
    return sum(values) / len(values) if values else None


def judge(rows: Sequence[PipelineRow], *, model: ChatModel, config: SingleJudgeConfig | UltraFeedbackJudgeConfig):
    """Judge a batch of rows (one output per row, parallel to its responses)."""
    if isinstance(config, UltraFeedbackJudgeConfig):
        return _judge_ultrafeedback(rows, model=model, config=config)
    return _judge_single(rows, model=model, config=config)


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------

_NUM = r"(-?\d+(?:\.\d+)?)"
_RATING_PATTERNS = (
    re.compile(r"\[\[\s*" + _NUM + r"\s*\]\]"),
    re.compile(r"[Rr]ating\s*[:：]\s*\[?\s*" + _NUM),
    re.compile(_NUM + r"\s*/\s*10\b"),
)
_SECTION = re.compile(r"^#+\s*Output for Text\s*(\d+)\s*$", re.MULTILINE | re.IGNORECASE)
_FIELD = re.compile(r"^\s*(Rating|Rationale|Type|Rationale for Rating)\s*:\s*(.*)$", re.IGNORECASE)


def _judge_single(rows: Sequence[PipelineRow], *, model: ChatModel, config: SingleJudgeConfig) -> list[JudgeOutput]:
    template = read_prompt(config.prompt)
    jobs = [(i, k) for i, r in enumerate(rows) if r.generate for k in range(len(r.generate.responses_ja))]
    prompts = [
        build_single_messages(rows[i].instruction_ja, rows[i].generate.responses_ja[k], template=template)
        for i, k in jobs
    ]
    schema = rationale_rating_schema(config.min_score, config.max_score) if config.structured_output else None
    replies = model.chat(prompts, sampling=config.sampling.model_copy(update={"n": 1}), json_schema=schema)
    outputs = [JudgeOutput() for _ in rows]
    for (i, _), completions in zip(jobs, replies, strict=True):
        c = completions[0]
        if config.structured_output:
            judgement, score = parse_structured_rating(c.text, low=config.min_score, high=config.max_score)
        else:
            judgement, score = c.text.strip(), parse_rating(c.text, low=config.min_score, high=config.max_score)
        o = outputs[i]
        outputs[i] = JudgeOutput(
            judgements=[*o.judgements, judgement], scores=[*o.scores, score], usage=o.usage + _usage(c)
        )
    return outputs


def _judge_ultrafeedback(
    rows: Sequence[PipelineRow], *, model: ChatModel, config: UltraFeedbackJudgeConfig
) -> list[JudgeOutput]:
    system = read_prompt(config.system_prompt_file)
    templates = {a: read_prompt(p) for a, p in config.aspect_prompts.items()}
    jobs, prompts = [], []
    for i, row in enumerate(rows):
        responses = row.generate.responses_ja if row.generate else []
        if not responses:
            continue
        for aspect, template in templates.items():
            key = f"{row.record.conversation_id}:{aspect}"
            order = shuffled_order(len(responses), key=key, seed=config.shuffle_seed)
            texts = [responses[j] for j in order]
            user = render(template, instruction=row.instruction_ja, texts=texts, n=len(texts))
            jobs.append((i, aspect, order))
            system_text = render(system, n=len(texts))
            prompts.append([{"role": "system", "content": system_text}, {"role": "user", "content": user}])
    replies = model.chat(prompts, sampling=config.sampling.model_copy(update={"n": 1}))
    per_row: dict[int, dict[str, list[AspectRating]]] = {}
    usage: dict[int, Usage] = {}
    for (i, aspect, order), completions in zip(jobs, replies, strict=True):
        c = completions[0]
        parsed = parse_ultrafeedback(c.text, n=len(order), aspect=aspect)
        mapped: list[AspectRating] = [AspectRating(rating=None)] * len(order)
        for pos, j in enumerate(order):
            mapped[j] = parsed[pos]
        per_row.setdefault(i, {})[aspect] = mapped
        usage[i] = usage.get(i, Usage()) + _usage(c)
    outputs = [JudgeOutput() for _ in rows]
    for i, aspects in per_row.items():
        n = len(rows[i].generate.responses_ja)
        judgements, scores = [], []
        for k in range(n):
            by_aspect = {a: aspects[a][k] for a in aspects}
            judgements.append(json.dumps({a: r.model_dump() for a, r in by_aspect.items()}, ensure_ascii=False))
            scores.append(ultrafeedback_score(list(by_aspect.values())))
        outputs[i] = JudgeOutput(judgements=judgements, scores=scores, usage=usage[i])
    return outputs


def _split_sections(text: str, n: int) -> list[str]:
    """Split at `#### Output for Text k` headers; texts without a section get ''."""
    sections = [""] * n
    marks = list(_SECTION.finditer(text or ""))
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        k = int(m.group(1)) - 1
        if 0 <= k < n and not sections[k]:
            sections[k] = text[m.end() : nxt.start() if nxt else len(text)].strip()
    return sections


def _parse_section(section: str, aspect: str) -> AspectRating:
    fields: list[tuple[str, str]] = []
    for line in section.splitlines():
        m = _FIELD.match(line)
        if m:
            fields.append((m.group(1).lower(), m.group(2).strip()))
        elif fields:
            name, value = fields[-1]
            fields[-1] = (name, f"{value}\n{line.strip()}".strip())
    ratings = [v for k, v in fields if k == "rating"]
    rationales = [v for k, v in fields if k in ("rationale", "rationale for rating")]
    types = [v for k, v in fields if k == "type"]
    rating = _aspect_rating(ratings[0]) if ratings else None
    typed = aspect in TYPED_ASPECTS
    return AspectRating(
        rating=rating,
        rationale=rationales[0] if rationales else "",
        types=[int(t) for t in re.findall(r"\d+", types[0])] if types and typed else [],
        rationale_for_rating=rationales[1] if typed and len(rationales) > 1 else None,
    )


def _aspect_rating(value: str) -> int | None:
    """1–5, or None for N/A, out of range, or unreadable."""
    m = re.match(r"\s*\[?\s*(\d+)", value)
    if not m:
        return None
    rating = int(m.group(1))
    return rating if 1 <= rating <= 5 else None


def _usage(c: Completion) -> Usage:
    return Usage(requests=1, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens)
