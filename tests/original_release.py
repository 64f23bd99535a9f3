"""A release in the original tokyotech-llm layout, built from the documented schema (SPEC §6), no real text.

The JA instructions are the project's own sentences, gzipped and encrypted with the project's GnuPG helper;
the source is a slice of the bundled sample (written by the project in the LMSYS-Chat-1M schema).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from pydantic import SecretStr

from lmsynth import constants
from lmsynth.crypto import encrypt_file
from lmsynth.original import layout


KEY = SecretStr("original-release-test-key")
SAMPLE = [json.loads(line) for line in constants.SAMPLE_SOURCE.read_text(encoding="utf-8").splitlines()[:12]]
IDS = [row["conversation_id"] for row in SAMPLE]
JA = {cid: f"日本語の質問その{i}です。丁寧に答えてください。" for i, cid in enumerate(IDS[:9])}
UNSAFE_ID = IDS[9]  # only in the `+unsafe` JA file, no responses
GEMMA3 = "gemma3-lmsys-chat-1m-synth-ja+en.jsonl.gz"
GEMMA2 = "gemma2-lmsys-chat-1m-synth-ja+en.jsonl.gz"


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def ann(score: float, *, rep: bool = False) -> dict:
    return {"response_token_length": 42, "judgement": f"丁寧です。 [[{score}]]", "repetition_flag": rep,
            "preference_score": score}  # fmt: skip


def synth(i: int, scores: list[float], *, reps: tuple[int, ...] = (), **kw: object) -> dict:
    """A public record: responses `r{i}-{k}`, their annotations, the flags, and an unknown extra field."""
    rec = {
        "conversation_id": IDS[i],
        "duplicate_user_instruction_ja": None,
        "empty_user_instruction_ja": False,
        "is_template_instruction": None,
        "synthesized_assistant_responses": [msg("assistant", f"r{i}-{k}") for k in range(len(scores))],
        "synthesized_response_scoring_annotations": [ann(s, rep=k in reps) for k, s in enumerate(scores)],
        "judge_model": "a field lmsynth does not know",
    }
    rec.update(kw)
    return rec


# Gemma-3: scores with -1 (failed judge), a template instruction, a duplicate, a repetition-flagged best response.
GEMMA3_RECORDS = [
    synth(0, [7, -1, 3]),
    synth(1, [-1, -1]),
    synth(2, [9, 2], is_template_instruction="company introduction"),
    synth(3, [], duplicate_user_instruction_ja=IDS[0]),
    synth(4, [10, 6, 8], reps=(0,)),
    synth(5, [5, 5]),
]
# Gemma-2: English responses and one two-turn conversation per record (its first user turn left blank).
GEMMA2_RECORDS = [
    synth(
        i,
        [6, 8],
        synthesized_assistant_responses_en=[msg("assistant", f"en{i}")],
        synthesized_multiturn_conversation=[
            msg("user", ""),
            msg("assistant", f"r{i}-1"),
            msg("user", f"続き{i}"),
            msg("assistant", f"t{i}"),
        ],
    )
    for i in range(6)
]


def write_gz_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_source(path: Path) -> Path:
    """The source: the sample's rows that the release needs (LMSYS-Chat-1M schema)."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SAMPLE), encoding="utf-8")
    return path


def write_release(
    root: Path,
    *,
    gemma3: list[dict] | None = None,
    gemma2: list[dict] | None = None,
    ja: list[dict] | None = None,
    passphrase: SecretStr = KEY,
) -> Path:
    """The original layout under `root`: both JA files (encrypted) and the public files asked for."""
    work = root.parent / f".{root.name}-plain"
    work.mkdir(parents=True, exist_ok=True)
    rows = ja if ja is not None else [
        {"conversation_id": cid, "translated_conversation": [msg("user", text)]} for cid, text in sorted(JA.items())
    ]  # fmt: skip
    unsafe = [*rows, {"conversation_id": UNSAFE_ID, "translated_conversation": [msg("user", "危険な質問です。")]}]
    for rel, content in ((layout.GATED_DEFAULT, rows), (layout.GATED_UNSAFE, unsafe)):
        plain = write_gz_lines(work / Path(rel).name.removesuffix(".gpg"), content)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        encrypt_file(plain, root / rel, passphrase=passphrase)
        plain.unlink()
    if gemma3 is not None:
        write_gz_lines(root / layout.GATED_DIR / GEMMA3, gemma3)
    if gemma2 is not None:
        write_gz_lines(root / layout.GATED_DIR / GEMMA2, gemma2)
    (root / "README.md").write_text("---\nlicense: other\n---\n", encoding="utf-8")
    work.rmdir()
    return root
