"""Stage 4: score every Japanese response, in one of two modes.

`single` is the original release's judge: MT-Bench-style single-answer grading on a 0–10 scale, the judge
writes a rationale and a rating like `[[8]]`; the judgement is the judge's whole answer (or, with
`structured_output`, its rationale). `ultrafeedback` rates all responses of an instruction together on
UltraFeedback's four aspects (1–5; honesty may be `N/A`), in a shuffled order mapped back, and scores each
response by the mean of its aspect ratings; the judgement is JSON, `{aspect: AspectRating}`.

Both parsers read any text without raising. A rating is taken only where the answer states one on the
scale: an answer (or one text's part of it) with no rating, or a rating off the scale, is unreadable. It is
asked again (`max_reasks`, see `lmsynth.pipeline.stages.reask`) and, if still unreadable, recorded as a failure:
score None, the raw answer kept. `N/A` is a value of its own, not a failure, and is left out of the mean.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from lmsynth.config import StrictModel
from lmsynth.llm import ChatModel
from lmsynth.pipeline.pipeline_row import JudgeOutput, PipelineRow, Usage
from lmsynth.pipeline.stages.prompts import PromptPath, default_prompt, read_prompt, render
from lmsynth.pipeline.stages.reask import ReaskSettings, ask
from lmsynth.sampling import SamplingConfig


JUDGE_SAMPLING = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=1024)
ASPECTS: tuple[str, ...] = ("instruction_following", "honesty", "truthfulness", "helpfulness")
# Aspects whose answers carry `Type` ids and a second rationale (UltraFeedback's templates).
TYPED_ASPECTS = frozenset({"truthfulness", "helpfulness"})
# Aspects whose rubric offers "N/A" (honesty: creative writing); elsewhere "N/A" breaks the format.
NA_ASPECTS = frozenset({"honesty"})
NA = "N/A"
ASPECT_SCALE = (1, 5)
TYPE_IDS = (1, 2, 3)
# A bounded rationale keeps the JSON closed within `max_tokens`, so small judges still yield a rating.
QUOTED_LINE_MIN = 30  # a copied line this long is cut from an answer (`own_words`); a judge's own are shorter
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


class SingleJudgeConfig(ReaskSettings):
    """MT-Bench-style single-answer grading, 0–10."""

    mode: Literal["single"] = "single"
    model: str = Field(min_length=1, description="A key of the pipeline's `models`.")
    prompt: PromptPath = Field(default_factory=lambda: default_prompt("judge_single.txt"))
    sampling: SamplingConfig = JUDGE_SAMPLING
    min_score: float = 0.0
    max_score: float = 10.0
    structured_output: bool = Field(False, description="Ask for JSON {rationale, rating} via structured output.")


class UltraFeedbackJudgeConfig(ReaskSettings):
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
    """One aspect's verdict on one response: an `ultrafeedback` judgement holds one per aspect."""

    rating: int | Literal["N/A"] | None = Field(
        description="1–5 as written; 'N/A' where the rubric allows it (honesty); None: unreadable (see `raw`)."
    )
    rationale: str = ""
    types: list[int] = Field(default_factory=list, description="Type ids 1–3 (truthfulness, helpfulness).")
    rationale_for_rating: str | None = None
    raw: str | None = Field(None, description="The judge's whole answer, kept when this part could not be read.")

    def to_json(self) -> dict[str, Any]:
        """The stored form: `raw` only on failures, so readable judgements stay small."""
        data = self.model_dump()
        if data["raw"] is None:
            del data["raw"]
        return data


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
        value = data["rating"]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return text, None
        rating = float(value)
        rationale = data.get("rationale", "")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        return text, None
    if not (low <= rating <= high):
        return text, None
    return (rationale if isinstance(rationale, str) else json.dumps(rationale, ensure_ascii=False)), rating


def build_single_messages(question: str, answer: str, *, template: str) -> list[dict[str, str]]:
    """The chat that grades one answer."""
    return [{"role": "user", "content": render(template, question=question, answer=answer)}]


def shuffled_order(n: int, *, key: str, seed: int) -> list[int]:
    """A deterministic permutation: position k of the prompt shows response `order[k]`."""
    order = list(range(n))
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def parse_ultrafeedback(
    text: str, *, n: int, aspect: str, quoted: Sequence[str] = (), prompt: Sequence[str] = ()
) -> list[AspectRating]:
    """Parse one aspect's answer for `n` texts (in prompt order); never raises.

    Texts are found by their `Output for Text k` headers (any Markdown decoration, any order; a repeated
    header counts once, the first readable copy wins); an answer with no header at all counts as the only
    text's when `n` is 1. A text without a readable rating is a failure carrying the whole answer in `raw`.
    What the answer copied from its `prompt`, or from the `quoted` instruction and responses, is not read
    (`own_words`).
    """
    text = text if isinstance(text, str) else ""
    mine = own_words(text, quoted, readable=has_ultrafeedback_rating, prompt=prompt) if quoted or prompt else text
    out = []
    for bodies in _split_sections(mine, n):
        parsed = [_parse_section(b, aspect) for b in bodies]
        good = next((p for p in parsed if p.rating is not None), None)
        out.append(good or (parsed[0] if parsed else AspectRating(rating=None)).model_copy(update={"raw": text}))
    return out


def ultrafeedback_score(ratings: Sequence[AspectRating]) -> float | None:
    """Fine-grained score: the mean of the numeric aspect ratings (N/A and failures excluded)."""
    values = [r.rating for r in ratings if isinstance(r.rating, int)]
    return sum(values) / len(values) if values else None


def own_words(
    answer: str, quoted: Iterable[str], *, readable: Callable[[str], bool], prompt: Iterable[str] = ()
) -> str:
    """`answer` without what it copied from its prompt that a parser could read as a rating.

    A judge may echo its prompt, and an instruction or a response may hold `Rating: [[10]]` or
    `#### Output for Text 1 ... Rating: 5`: those must not become the judge's rating. Cut from the answer
    wherever they appear and `readable` accepts them: each `prompt` message, and each `quoted` text (the
    instruction, a response) and each line of either at least `QUOTED_LINE_MIN` characters long. Shorter
    lines stay, since the judge's own `Rating: [[7]]` or `#### Output for Text 1` may be the same text; so
    does a quoted text that is the whole answer (a judge whose entire answer equals a short response wrote
    it itself as far as anyone can tell), while an answer that is only the echoed prompt reads as nothing.
    """
    answer = answer if isinstance(answer, str) else ""
    whole = answer.strip()
    spans = set()
    for text in prompt:
        if text.strip() and text.strip() in answer and readable(text):
            spans.add(text.strip())
    for text in [*quoted, *prompt]:
        pieces = [text, *(ln for ln in text.splitlines() if len(ln.strip()) >= QUOTED_LINE_MIN)]
        for piece in {p.strip() for p in pieces}:
            if piece and piece != whole and piece in answer and readable(piece):
                spans.add(piece)
    for span in sorted(spans, key=len, reverse=True):
        answer = answer.replace(span, "\n")
    return answer


def has_single_rating(text: str) -> bool:
    """Whether `parse_rating` would find a rating form (on the scale or not) in `text`."""
    return any(p.search(text) for p in _RATING_PATTERNS)


def has_ultrafeedback_rating(text: str) -> bool:
    """Whether `parse_ultrafeedback` would find a section header or a field line in `text`."""
    return bool(_SECTION.search(text)) or any(_FIELD.match(line) for line in text.splitlines())


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

    def parse(j: int, text: str) -> tuple[tuple[str, float | None], int]:
        if config.structured_output:
            judgement, score = parse_structured_rating(text, low=config.min_score, high=config.max_score)
        else:
            i, k = jobs[j]
            quoted = [rows[i].instruction_ja, rows[i].generate.responses_ja[k]]
            mine = own_words(text, quoted, readable=has_single_rating, prompt=[m["content"] for m in prompts[j]])
            judgement, score = text.strip(), parse_rating(mine, low=config.min_score, high=config.max_score)
        return (judgement, score), int(score is None)

    answers = ask(model, prompts, sampling=config.sampling, parse=parse, settings=config, json_schema=schema)
    outputs = [JudgeOutput() for _ in rows]
    for (i, _), a in zip(jobs, answers, strict=True):
        judgement, score = a.value
        o = outputs[i]
        outputs[i] = JudgeOutput(
            judgements=[*o.judgements, judgement], scores=[*o.scores, score], usage=o.usage + a.usage
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

    def parse(j: int, text: str) -> tuple[list[AspectRating], int]:
        i, aspect, order = jobs[j]
        quoted = [rows[i].instruction_ja, *rows[i].generate.responses_ja]
        prompt = [m["content"] for m in prompts[j]]
        parsed = parse_ultrafeedback(text, n=len(order), aspect=aspect, quoted=quoted, prompt=prompt)
        return parsed, sum(r.rating is None for r in parsed)

    answers = ask(model, prompts, sampling=config.sampling, parse=parse, settings=config)
    per_row: dict[int, dict[str, list[AspectRating]]] = {}
    usage: dict[int, Usage] = {}
    for (i, aspect, order), a in zip(jobs, answers, strict=True):
        mapped: list[AspectRating] = [AspectRating(rating=None)] * len(order)
        for pos, j in enumerate(order):
            mapped[j] = a.value[pos]
        per_row.setdefault(i, {})[aspect] = mapped
        usage[i] = usage.get(i, Usage()) + a.usage
    outputs = [JudgeOutput() for _ in rows]
    for i, aspects in per_row.items():
        n = len(rows[i].generate.responses_ja)
        judgements, scores = [], []
        for k in range(n):
            by_aspect = {a: aspects[a][k] for a in aspects}
            judgements.append(json.dumps({a: r.to_json() for a, r in by_aspect.items()}, ensure_ascii=False))
            scores.append(ultrafeedback_score(list(by_aspect.values())))
        outputs[i] = JudgeOutput(judgements=judgements, scores=scores, usage=usage[i])
    return outputs


# Markdown around headers and labels: `#### Output for Text 1`, `**Output for Text 1:**`, `- **Rating:** 4`.
_DECOR = r"[ \t>*_#\-]*"
_SECTION = re.compile(
    r"^" + _DECOR + r"Output\s+for\s+Text\s*(\d{1,4})(?!\d)[ \t*_:：.)\]]*$", re.MULTILINE | re.IGNORECASE
)
_FIELD = re.compile(
    r"^" + _DECOR + r"(Rationale\s+for\s+Rating|Rating|Rationale|Types?)[ \t*_]*[:：][ \t*_]*(.*)$", re.IGNORECASE
)
_NA = re.compile(r"N\s*/\s*A(?![a-z0-9])", re.IGNORECASE)
# A leading whole number, optionally bracketed; a decimal (3.5) is off the integer scale.
_LEADING_INT = re.compile(r"[\[(]?\s*(\d{1,4})(?![\d.,٫]\d|\d)")
_INTS = re.compile(r"(?<!\d)(\d{1,4})(?!\d)")


def _split_sections(text: str, n: int) -> list[list[str]]:
    """The bodies under each `Output for Text k` header, per text (several when a header repeats)."""
    sections: list[list[str]] = [[] for _ in range(n)]
    marks = list(_SECTION.finditer(text))
    if not marks:
        if n == 1 and text.strip():
            sections[0].append(text)
        return sections
    ends = [m.start() for m in marks[1:]] + [len(text)]
    for m, end in zip(marks, ends, strict=True):
        k = int(m.group(1)) - 1
        if 0 <= k < n:
            sections[k].append(text[m.end() : end])
    return sections


def _parse_section(section: str, aspect: str) -> AspectRating:
    fields: list[tuple[str, str]] = []
    for line in section.splitlines():
        m = _FIELD.match(line)
        if m:
            name = re.sub(r"\s+", " ", m.group(1).lower())
            fields.append(("type" if name == "types" else name, _clean(m.group(2))))
        elif fields and line.strip():
            name, value = fields[-1]
            fields[-1] = (name, f"{value}\n{line.strip()}".strip())
    ratings = [v for k, v in fields if k == "rating"]
    rationales = [v for k, v in fields if k in ("rationale", "rationale for rating")]
    types = [v for k, v in fields if k == "type"]
    typed = aspect in TYPED_ASPECTS
    return AspectRating(
        rating=_aspect_rating(ratings[0], aspect) if ratings else None,
        rationale=rationales[0] if rationales else "",
        types=_type_ids(types[0]) if types and typed else [],
        rationale_for_rating=rationales[1] if typed and len(rationales) > 1 else None,
    )


def _aspect_rating(value: str, aspect: str) -> int | Literal["N/A"] | None:
    """1–5 as written, `N/A` where the aspect allows it; anything else (off the scale, prose) is unreadable."""
    value = value.strip().strip("[]()").strip()
    if _NA.match(value):
        return NA if aspect in NA_ASPECTS else None
    m = _LEADING_INT.match(value)
    if not m:
        return None
    rating = int(m.group(1))
    low, high = ASPECT_SCALE
    return rating if low <= rating <= high else None


def _type_ids(value: str) -> list[int]:
    """The type ids written (1–3, in order, once each); 'None' gives []."""
    ids: list[int] = []
    for raw in _INTS.findall(value):
        t = int(raw)
        if t in TYPE_IDS and t not in ids:
            ids.append(t)
    return ids


def _clean(value: str) -> str:
    """A field value without the Markdown emphasis around it."""
    return value.strip().strip("*_").strip()
