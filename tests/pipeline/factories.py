"""Tiny factories for pipeline rows, configs and prepared folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lmsynth.io import write_jsonl
from lmsynth.llm import FakeChatModel, FakeModelConfig
from lmsynth.pipeline.pipeline_row import FlagsOutput, GenerateOutput, PipelineRow, TranslateOutput
from lmsynth.records import PREPARED_MARKER, InstructionRecord


def make_record(i: int = 0, **kw: Any) -> InstructionRecord:
    data = {
        "conversation_id": f"c{i}",
        "language": "English",
        "instruction": f"Question number {i}?",
        "redacted": False,
    }
    return InstructionRecord(**{**data, **kw})


def make_row(i: int = 0, *, ja: str | None = None, responses: list[str] | None = None, **kw: Any) -> PipelineRow:
    row = PipelineRow(row_index=i, record=make_record(i, **kw))
    update: dict[str, Any] = {}
    if ja is not None:
        update["translate"] = TranslateOutput(instruction_ja=ja, translated=True)
        update["flags"] = FlagsOutput(empty=not ja)
    if responses is not None:
        update["generate"] = GenerateOutput(
            responses_ja=responses,
            token_lengths=[len(r) for r in responses],
            repetition_flags=[False] * len(responses),
        )
    return row.model_copy(update=update)


def fake(*replies: str, **kw: Any) -> FakeChatModel:
    return FakeChatModel(FakeModelConfig(replies=list(replies), **kw))


def write_prepared(folder: Path, records: list[InstructionRecord], unsafe: list[InstructionRecord] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "instructions.jsonl", records)
    write_jsonl(folder / "unsafe.jsonl", [r.model_copy(update={"flagged": True}) for r in unsafe])
    (folder / PREPARED_MARKER).write_text("ok\n", encoding="utf-8")
    return folder


FAKE_PIPELINE = """\
name: fake
batch_size: {batch_size}
models:
  f:
    backend: fake
    replies: ["回答です。 Rating: [[7]]"]
    sleep_s: {sleep_s}
    call_log: {call_log}
  t:
    backend: fake
    replies: ["訳 {{last_line}}"]
    sleep_s: {sleep_s}
    call_log: {call_log}
translate: {{model: t, prompt: {prompt}}}
generate: {{model: f, sampling: {{n: 2, max_tokens: 50}}, english: {{n: 1}}}}
judge: {{mode: single, model: f}}
"""


def write_fake_pipeline(
    folder: Path, *, batch_size: int = 2, sleep_s: float = 0.0, prompt: Path | None = None, window: int | None = None
) -> tuple[Path, Path]:
    """A fake-backend pipeline YAML and the call log its model appends to."""
    from lmsynth import constants

    prompt = prompt or constants.PIPELINES_DIR / "prompts" / "translate_en_ja.txt"
    log = folder / "calls.jsonl"
    path = folder / "fake.yaml"
    text = FAKE_PIPELINE.format(batch_size=batch_size, sleep_s=sleep_s, call_log=log, prompt=prompt)
    path.write_text(text + (f"window: {window}\n" if window else ""))
    return path, log


def run_cli(pipe: Path, prep: Path, out: Path, cache: Path, log: Path) -> subprocess.Popen:
    """`lmsynth run` as its own process (and session, so a test can kill its whole group) on cache `cache`."""
    env = {**os.environ, "LMSYNTH_CACHE": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(out)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
