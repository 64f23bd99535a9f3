"""Synthetic record factories and run folders for tests, the demo and benchmarks.

Everything here is written by the project (never LMSYS-Chat-1M text) and deterministic by seed: the same
arguments give the same records in any process, because every random draw comes from a `random.Random`
seeded with a string (hashed with SHA-512 by the standard library, so not subject to hash randomisation).

`write_run_dir` streams: it holds one record at a time, so it can write 100k records in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from lmsynth.io import atomic_path
from lmsynth.records import (
    PREPARED_INSTRUCTIONS,
    PREPARED_MARKER,
    PREPARED_UNSAFE,
    RUN_RECORDS_DIR,
    RUN_UNSAFE_DIR,
    InstructionRecord,
    RunCounts,
    RunInfo,
    StageModel,
    SynthRecord,
    Usage,
    record_counts,
    write_run_info,
)
from lmsynth.sampling import SamplingConfig


Shape = Literal["v0.5", "v0.3", "v0.1"]

# Responses per instruction of each generation (SPEC §1): v0.1/v0.3 up to 6 JA + 1 EN, v0.5 up to 10 JA.
DEFAULT_RESPONSES: dict[str, int] = {"v0.1": 6, "v0.3": 6, "v0.5": 10}

# How often write_run_dir plants the special cases the release must handle.
EMPTY_EVERY = 53  # an empty translation: no responses
DUPLICATE_EVERY = 41  # the same translated text as an earlier record: no responses
FAILED_SCORE_RATE = 0.05  # unparseable judge ratings (preference_score=None)
REPETITION_RATE = 0.03  # responses flagged as repetitions (ran past 2,000 tokens)
RECORDS_PER_SHARD = 10_000


def conversation_id_for(seed: int, index: int) -> str:
    """A 32-hex-digit id shaped like LMSYS-Chat-1M's, fixed by seed and index."""
    return hashlib.sha256(f"lmsynth-test:{seed}:{index}".encode()).hexdigest()[:32]


def ja_instruction_for(conversation_id: str) -> str:
    """The (synthetic) Japanese instruction of a conversation: unique per id, never seen in any response."""
    rng = random.Random(f"ja-instruction:{conversation_id}")
    topic = rng.choice(_JA_TOPICS)
    ask = rng.choice(_JA_ASKS)
    return f"{topic}について、{ask}（整理番号 {conversation_id[:12]}）"


def en_instruction_for(conversation_id: str) -> str:
    """The (synthetic) English original of a conversation's instruction."""
    rng = random.Random(f"en-instruction:{conversation_id}")
    return f"{rng.choice(_EN_ASKS)} {rng.choice(_EN_TOPICS)} (reference {conversation_id[:12]})"


def make_synth_record(
    conversation_id: str | None = None,
    *,
    n_responses: int | None = None,
    shape: Shape = "v0.5",
    seed: int = 0,
    **overrides: Any,
) -> SynthRecord:
    """One realistic SynthRecord; keyword overrides replace any field.

    Args:
        conversation_id: The record id; derived from `seed` when omitted.
        n_responses: JA responses; defaults to the shape's (10 for v0.5, 6 otherwise).
        shape: Which generation the record looks like: v0.1 (JA + one EN response), v0.3 (+ a multiturn
            conversation whose first user turn is the JA instruction) or v0.5 (JA only).
        seed: Fixes every random draw.
        **overrides: Field values that replace the generated ones (validated like any record).

    Returns:
        A validated `SynthRecord`.
    """
    cid = conversation_id or conversation_id_for(seed, 0)
    data = synth_record_dict(cid, n_responses=n_responses, shape=shape, seed=seed)
    data.update(overrides)
    return SynthRecord.model_validate(data)


def synth_record_dict(
    conversation_id: str,
    *,
    n_responses: int | None = None,
    shape: Shape = "v0.5",
    seed: int = 0,
    instruction: str | None = None,
) -> dict[str, Any]:
    """The JSON-ready dict behind `make_synth_record` (fast path for writing many records)."""
    if shape not in DEFAULT_RESPONSES:
        raise ValueError(f"`shape` must be one of {sorted(DEFAULT_RESPONSES)}, got {shape!r}")
    n = DEFAULT_RESPONSES[shape] if n_responses is None else n_responses
    rng = random.Random(f"synth:{seed}:{conversation_id}")
    text = ja_instruction_for(conversation_id) if instruction is None else instruction
    responses = [{"role": "assistant", "content": _ja_text(rng)} for _ in range(n)]
    annotations = [_annotation(rng, r["content"]) for r in responses]
    rec: dict[str, Any] = {
        "conversation_id": conversation_id,
        "duplicate_user_instruction_ja": None,
        "empty_user_instruction_ja": False,
        "translated_conversation": [{"role": "user", "content": text}],
        "is_template_instruction": "company introduction" if rng.random() < 0.04 else None,
        "synthesized_assistant_responses": responses,
        "synthesized_response_scoring_annotations": annotations,
    }
    if shape in ("v0.1", "v0.3"):
        rec["synthesized_assistant_responses_en"] = [{"role": "assistant", "content": _en_text(rng)}]
    if shape == "v0.3":
        rec["synthesized_multiturn_conversation"] = _multiturn(rng, text, responses, annotations)
    return rec


def iter_run_dicts(n: int, *, shape: Shape = "v0.5", seed: int = 0) -> Iterator[dict[str, Any]]:
    """The `n` record dicts `write_run_dir` writes, in order, with empty and duplicate instructions planted."""
    original = conversation_id_for(seed, 1)  # duplicates point at this regular record
    for i in range(n):
        cid = conversation_id_for(seed, i)
        if i and i % EMPTY_EVERY == 0:
            rec = synth_record_dict(cid, n_responses=0, shape=shape, seed=seed, instruction="")
            rec["empty_user_instruction_ja"] = True
            _strip_generated(rec, shape)
        elif i > 1 and i % DUPLICATE_EVERY == 0:
            rec = synth_record_dict(
                cid, n_responses=0, shape=shape, seed=seed, instruction=ja_instruction_for(original)
            )
            rec["duplicate_user_instruction_ja"] = original
            _strip_generated(rec, shape)
        else:
            rec = synth_record_dict(cid, shape=shape, seed=seed)
        yield rec


def write_run_dir(
    path: Path | str,
    n: int,
    *,
    shape: Shape = "v0.5",
    seed: int = 0,
    unsafe_n: int = 0,
    prepared: Path | str | None = None,
    records_per_shard: int = RECORDS_PER_SHARD,
) -> Path:
    """Write a run folder (`records/`, `unsafe/`, `run.json`) per the contract in `lmsynth.records`.

    Args:
        path: The run folder to create.
        n: Records in `records/` (including planted empty and duplicate instructions).
        shape: The generation the records look like.
        seed: Fixes every record.
        unsafe_n: Moderation-flagged records in `unsafe/` (translation fields only).
        prepared: When given, also write the matching prepare output there (English originals), so that
            the leak guard can be tested on them.
        records_per_shard: Records per `records/*.jsonl` shard.

    Returns:
        `path`.
    """
    path = Path(path)

    def written() -> Iterator[SynthRecord]:
        shard: list[str] = []
        shard_no = 0
        for rec in iter_run_dicts(n, shape=shape, seed=seed):
            shard.append(json.dumps(rec, ensure_ascii=False))
            if len(shard) >= records_per_shard:
                _write_lines(path / RUN_RECORDS_DIR / f"records-{shard_no:05d}.jsonl", shard)
                shard, shard_no = [], shard_no + 1
            yield SynthRecord.model_validate(rec)
        if shard or shard_no == 0:
            _write_lines(path / RUN_RECORDS_DIR / f"records-{shard_no:05d}.jsonl", shard)

    unsafe = [_unsafe_dict(seed, i) for i in range(unsafe_n)]
    _write_lines(path / RUN_UNSAFE_DIR / "records-00000.jsonl", [json.dumps(u, ensure_ascii=False) for u in unsafe])
    fingerprint = hashlib.sha256(f"{shape}:{seed}:{n}:{unsafe_n}".encode()).hexdigest()
    write_run_info(path, synthetic_run_info(written(), unsafe=unsafe_n, shape=shape, fingerprint=fingerprint))
    if prepared is not None:
        write_prepared_dir(prepared, n, seed=seed, unsafe_n=unsafe_n)
    return path


def synthetic_run_info(records: Iterable[SynthRecord], *, unsafe: int, shape: Shape, fingerprint: str) -> RunInfo:
    """The `run.json` the runner would write for `records` (and `unsafe` flagged ones), made by a synthetic model.

    Counts are summed record by record as the runner sums them; the generate stage's tokens are the records'
    response lengths.
    """
    counts = dict.fromkeys(RunCounts.model_fields, 0)
    generated = Usage()
    for rec in records:
        for key, value in record_counts(rec).items():
            counts[key] += value
        lengths = [a.response_token_length for a in rec.synthesized_response_scoring_annotations]
        generated += Usage(requests=int(bool(lengths)), completion_tokens=sum(lengths))
    counts["unsafe"] = unsafe
    counts["translated"] = counts["instructions"] - counts["empty"] + unsafe
    model = StageModel(backend="fake", model="lmsynth/synthetic")
    responses = SamplingConfig(n=DEFAULT_RESPONSES[shape])
    return RunInfo(
        pipeline=f"synthetic-{shape}",
        fingerprint=fingerprint,
        input_digest=hashlib.sha256(f"input:{fingerprint}".encode()).hexdigest(),
        stage_fingerprints={},
        models={"translate": model, "generate": model, "judge": model},
        generator=model,
        judge=model,
        sampling={"translate": SamplingConfig(), "generate": responses, "judge": SamplingConfig()},
        counts=RunCounts(**counts),
        tokens={"translate": Usage(), "generate": generated, "judge": Usage()},
    )


SCRIPTED_RESPONSE = ("これはテスト用の回答です。" * 64)[:800]  # ~800 Japanese characters


def write_scripted_pipeline(pipeline: Path, root: Path, *, window: int | None = None, **settings: Any) -> Path:
    """`pipeline` (a v0.5-style YAML) with its models replaced by three scripted ones, prompt paths made absolute.

    Translation echoes the instruction, each response is `SCRIPTED_RESPONSE`, the judge answers `[[7]]`: runs
    measure lmsynth and distilabel, not a model. `settings` replace top-level keys (`shard_records`, ...).
    """
    import yaml

    config = yaml.safe_load(pipeline.read_text(encoding="utf-8"))
    config["models"] = {
        "translator": {"backend": "fake", "model": "fake-translator", "replies": ["{last_line}"]},
        "generator": {"backend": "fake", "model": "fake-generator", "replies": [SCRIPTED_RESPONSE]},
        "judge": {"backend": "fake", "model": "fake-judge", "replies": ["回答は正確で分かりやすい。Rating: [[7]]"]},
    }
    for stage, model in (("translate", "translator"), ("generate", "generator"), ("judge", "judge")):
        config[stage]["model"] = model
        if "prompt" in config[stage]:
            config[stage]["prompt"] = str(pipeline.parent / config[stage]["prompt"])
    if window is not None:
        config["window"] = window
    config.update(settings)
    path = root / f"{pipeline.stem}-fake.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def write_prepared_dir(path: Path | str, n: int, *, seed: int = 0, unsafe_n: int = 0) -> Path:
    """Write a prepare output (`instructions.jsonl`, `unsafe.jsonl`) matching `write_run_dir`'s ids."""
    path = Path(path)
    safe = (_instruction_record(conversation_id_for(seed, i), flagged=False) for i in range(n))
    flagged = (_instruction_record(_unsafe_id(seed, i), flagged=True) for i in range(unsafe_n))
    _write_lines(path / PREPARED_INSTRUCTIONS, (r.model_dump_json() for r in safe))
    _write_lines(path / PREPARED_UNSAFE, (r.model_dump_json() for r in flagged))
    _write_lines(path / PREPARED_MARKER, ["ok"])  # last, as `lmsynth prepare` writes it
    return path


# Private helpers

_JA_TOPICS = [
    "量子コンピュータの基本原理",
    "日本の四季と年中行事",
    "機械学習モデルの評価方法",
    "持続可能なエネルギー政策",
    "江戸時代の商業と流通",
    "健康的な睡眠習慣",
    "小規模事業の資金調達",
    "プログラミング言語の型システム",
    "海洋生態系の保全",
    "効果的なプレゼンテーションの作り方",
]
_JA_ASKS = [
    "初心者にも分かるように説明してください。",
    "重要な点を三つ挙げてください。",
    "具体例を交えて詳しく教えてください。",
    "メリットとデメリットを比較してください。",
    "短い文章でまとめてください。",
]
_JA_SENTENCES = [
    "まず、基本的な考え方を整理しておきましょう。",
    "この点については、いくつかの視点から考えることができます。",
    "具体的な例として、日常生活の中での応用が挙げられます。",
    "一方で、注意すべき課題も存在します。",
    "専門家の間でも意見が分かれている部分があります。",
    "結論として、状況に応じた柔軟な判断が重要です。",
    "以下に主なポイントを箇条書きでまとめます。",
    "歴史的な背景を知ることで、理解がより深まります。",
    "費用と効果のバランスを考慮する必要があります。",
    "最新の研究では、新しい手法も提案されています。",
    "実際に試してみることで、理解が定着しやすくなります。",
    "ご不明な点があれば、お気軽にお尋ねください。",
]
_EN_TOPICS = [
    "the basics of quantum computing.",
    "how to plan a balanced weekly meal menu.",
    "ways to evaluate a machine learning model.",
    "the history of the printing press.",
    "tips for writing a clear technical report.",
]
_EN_ASKS = ["Please explain", "Write a short essay about", "Give three key points on", "Summarize"]
_EN_SENTENCES = [
    "Let us start with the core idea.",
    "There are several ways to look at this question.",
    "A concrete example makes the point clearer.",
    "On the other hand, there are trade-offs to keep in mind.",
    "In short, the right choice depends on the situation.",
    "Here are the main points in order.",
]
_JUDGEMENTS = [
    "回答は質問に的確に答えており、構成も分かりやすい。",
    "内容はおおむね正確だが、具体例がやや不足している。",
    "説明が冗長で、要点が分かりにくい部分がある。",
    "事実誤認が含まれており、信頼性に欠ける。",
]


def _ja_text(rng: random.Random) -> str:
    # Realistic lengths: log-normal around ~20 sentences (~600 characters), a few very long ones.
    k = max(1, min(120, int(rng.lognormvariate(2.9, 0.5))))
    return "".join(rng.choices(_JA_SENTENCES, k=k))


def _en_text(rng: random.Random) -> str:
    k = max(1, min(80, int(rng.lognormvariate(2.6, 0.5))))
    return " ".join(rng.choices(_EN_SENTENCES, k=k))


def _annotation(rng: random.Random, content: str) -> dict[str, Any]:
    tokens = int(len(content) * rng.uniform(0.8, 1.2))
    repetition = rng.random() < REPETITION_RATE
    if repetition:
        tokens = 2000 + rng.randrange(1, 2000)
    judgement = rng.choice(_JUDGEMENTS)
    if rng.random() < FAILED_SCORE_RATE:
        return {
            "response_token_length": tokens,
            "judgement": judgement + " 評価: 判定不能",
            "repetition_flag": repetition,
            "preference_score": None,
        }
    score = float(rng.randint(1, 10))
    return {
        "response_token_length": tokens,
        "judgement": f"{judgement} 評価: [[{int(score)}]]",
        "repetition_flag": repetition,
        "preference_score": score,
    }


def _multiturn(
    rng: random.Random, instruction: str, responses: list[dict], annotations: list[dict]
) -> list[list[dict[str, str]]]:
    if not responses:
        return []
    scores = [a["preference_score"] if a["preference_score"] is not None else -1.0 for a in annotations]
    best = responses[scores.index(max(scores))]
    conv = [{"role": "user", "content": instruction}, dict(best)]
    if rng.random() < 0.7:  # some stay single-turn, as in v0.3
        conv.append({"role": "user", "content": "もう少し詳しく説明していただけますか。"})
        conv.append({"role": "assistant", "content": _ja_text(rng)})
    return [conv]


def _strip_generated(rec: dict[str, Any], shape: str) -> None:
    rec["synthesized_assistant_responses"] = []
    rec["synthesized_response_scoring_annotations"] = []
    rec["is_template_instruction"] = None
    if shape in ("v0.1", "v0.3"):
        rec["synthesized_assistant_responses_en"] = []
    if shape == "v0.3":
        rec["synthesized_multiturn_conversation"] = []


def _unsafe_id(seed: int, index: int) -> str:
    return hashlib.sha256(f"lmsynth-test-unsafe:{seed}:{index}".encode()).hexdigest()[:32]


def _unsafe_dict(seed: int, index: int) -> dict[str, Any]:
    cid = _unsafe_id(seed, index)
    return {
        "conversation_id": cid,
        "duplicate_user_instruction_ja": None,
        "empty_user_instruction_ja": False,
        "translated_conversation": [{"role": "user", "content": ja_instruction_for(cid)}],
        "is_template_instruction": None,
        "synthesized_assistant_responses": [],
        "synthesized_response_scoring_annotations": [],
    }


def _instruction_record(cid: str, *, flagged: bool) -> InstructionRecord:
    return InstructionRecord(
        conversation_id=cid, language="English", instruction=en_instruction_for(cid), redacted=False, flagged=flagged
    )


def _write_lines(path: Path, lines: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
