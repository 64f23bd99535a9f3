"""Bad input, one kind per row: a one-line error naming the file, the line (or row) and the field, nothing written.

Every file format lmsynth reads is strict: `"yes"`, `"true"` or `1` is not a boolean, `"3"` or `1.5` not an
integer, and unknown keys are refused. Empty inputs are refused too, naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from lmsynth import constants
from lmsynth.errors import LmsynthError
from lmsynth.key import derive_key
from lmsynth.prepare import prepare
from lmsynth.records import RUN_RECORDS_DIR
from lmsynth.release.build import build_release
from lmsynth.release.release_yaml import load_manifest
from lmsynth.testing import write_prepared_dir
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import check_tree
from tests.hub.trees import write_tree


Mutation = Callable[[dict], object]


def _set(path: str, value: object) -> Mutation:
    """Set a dotted path (`a.0.b`) of a record to `value`; `...` deletes it."""

    def mutate(rec: dict) -> dict:
        *parents, last = path.split(".")
        node = rec
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        key = int(last) if last.isdigit() else last
        if value is ...:
            del node[key]
        else:
            node[key] = value
        return rec

    return mutate


def _raw(text: str) -> Mutation:
    return lambda rec: text


# ---------------------------------------------------------------------------
# Release records (SynthRecord lines of a run folder): 28 kinds
# ---------------------------------------------------------------------------

RECORD_CASES: dict[str, tuple[Mutation, str | None]] = {
    "not JSON": (_raw("{not json"), None),
    "a JSON array": (_raw("[1, 2]"), None),
    "missing conversation_id": (_set("conversation_id", ...), "conversation_id"),
    "empty conversation_id": (_set("conversation_id", ""), "conversation_id"),
    "integer conversation_id": (_set("conversation_id", 12), "conversation_id"),
    "empty flag 'yes'": (_set("empty_user_instruction_ja", "yes"), "empty_user_instruction_ja"),
    "empty flag 1": (_set("empty_user_instruction_ja", 1), "empty_user_instruction_ja"),
    "empty flag 'true'": (_set("empty_user_instruction_ja", "true"), "empty_user_instruction_ja"),
    "empty flag null": (_set("empty_user_instruction_ja", None), "empty_user_instruction_ja"),
    "duplicate mark integer": (_set("duplicate_user_instruction_ja", 3), "duplicate_user_instruction_ja"),
    "template mark boolean": (_set("is_template_instruction", True), "is_template_instruction"),
    "translation not a list": (_set("translated_conversation", "text"), "translated_conversation"),
    "translation role unknown": (_set("translated_conversation.0.role", "robot"), "translated_conversation[0].role"),
    "translation content missing": (_set("translated_conversation.0.content", ...), "translated_conversation[0]"),
    "translation extra key": (_set("translated_conversation.0.lang", "ja"), "translated_conversation[0].lang"),
    "unknown field": (_set("redacted", False), "redacted"),
    "response content integer": (
        _set("synthesized_assistant_responses.0.content", 5),
        "synthesized_assistant_responses[0].content",
    ),
    "repetition flag 'yes'": (
        _set("synthesized_response_scoring_annotations.0.repetition_flag", "yes"),
        "synthesized_response_scoring_annotations[0].repetition_flag",
    ),
    "repetition flag 1": (
        _set("synthesized_response_scoring_annotations.0.repetition_flag", 1),
        "synthesized_response_scoring_annotations[0].repetition_flag",
    ),
    "token length string": (
        _set("synthesized_response_scoring_annotations.0.response_token_length", "12"),
        "synthesized_response_scoring_annotations[0].response_token_length",
    ),
    "token length fractional": (
        _set("synthesized_response_scoring_annotations.0.response_token_length", 1.5),
        "synthesized_response_scoring_annotations[0].response_token_length",
    ),
    "token length negative": (
        _set("synthesized_response_scoring_annotations.0.response_token_length", -1),
        "synthesized_response_scoring_annotations[0].response_token_length",
    ),
    "score string": (
        _set("synthesized_response_scoring_annotations.0.preference_score", "8"),
        "synthesized_response_scoring_annotations[0].preference_score",
    ),
    "judgement missing": (
        _set("synthesized_response_scoring_annotations.0.judgement", ...),
        "synthesized_response_scoring_annotations[0].judgement",
    ),
    "one annotation too few": (
        _set("synthesized_response_scoring_annotations.0", ...),
        "synthesized_response_scoring_annotations",
    ),
    "EN responses on a JA-only subset": (
        _set("synthesized_assistant_responses_en", [{"role": "assistant", "content": "x"}]),
        "synthesized_assistant_responses_en",
    ),
    "multiturn on a single-turn subset": (
        _set("synthesized_multiturn_conversation", [[{"role": "user", "content": "x"}]]),
        "synthesized_multiturn_conversation",
    ),
    "repeated conversation_id": (lambda rec: {**rec, "conversation_id": _FIRST_ID[0]}, "conversation_id"),
}
_FIRST_ID: list[str] = []


def _release(root: Path) -> None:
    build_release(
        "v0.5",
        manifest_path=root / "v0.5.yaml",
        target=str(root / "hub"),
        out_dir=root / "build",
        passphrase=SecretStr("k"),
    )


def _assert_one_line(err: BaseException, *, file: str, where: str | None, field: str | None) -> None:
    msg = str(err)
    assert isinstance(err, LmsynthError), type(err)
    assert "\n" not in msg and file in msg, msg
    if where is not None:
        assert where in msg, msg
    if field is not None:
        assert f"`{field}" in msg, msg


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_bad_record_line(small_project: Path, case: str) -> None:
    mutate, field = RECORD_CASES[case]
    shard = next((small_project / "runs" / "gemma-3" / RUN_RECORDS_DIR).glob("*.jsonl"))
    lines = shard.read_text(encoding="utf-8").splitlines()
    _FIRST_ID[:] = [json.loads(lines[0])["conversation_id"]]
    new = mutate(json.loads(lines[2]))
    lines[2] = new if isinstance(new, str) else json.dumps(new, ensure_ascii=False)
    shard.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LmsynthError) as info:
        _release(small_project)
    _assert_one_line(info.value, file=shard.name, where="line 3", field=field)
    assert not (small_project / "build").exists() and not (small_project / "hub").exists()


def test_record_not_utf8(small_project: Path) -> None:
    shard = next((small_project / "runs" / "gemma-3" / RUN_RECORDS_DIR).glob("*.jsonl"))
    lines = shard.read_bytes().splitlines()
    lines[1] = b'{"conversation_id": "\xff\xfe"}'
    shard.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(LmsynthError) as info:
        _release(small_project)
    _assert_one_line(info.value, file=shard.name, where="line 2", field=None)
    assert "UTF-8" in str(info.value) and not (small_project / "build").exists()


# ---------------------------------------------------------------------------
# Prepared instructions read by the release's leak guard: 3 kinds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("redacted", "yes"), ("flagged", 1), ("language", None)], ids=["redacted", "flagged", "lang"]
)
def test_bad_prepared_line(small_project: Path, field: str, value: object) -> None:
    path = small_project / "runs" / "prepared" / "instructions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4] = json.dumps({**json.loads(lines[4]), field: value})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(LmsynthError) as info:
        _release(small_project)
    _assert_one_line(info.value, file="instructions.jsonl", where="line 5", field=field)
    assert not (small_project / "build").exists()


# ---------------------------------------------------------------------------
# Source rows (LMSYS-Chat-1M schema) read by prepare, key and recover: 14 kinds
# ---------------------------------------------------------------------------


def _source_row(i: int) -> dict:
    return {
        "conversation_id": f"c{i:04d}",
        "model": "m",
        "conversation": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "a"}],
        "turn": 1,
        "language": "English",
        "openai_moderation": [{"categories": {"hate": False}, "category_scores": {"hate": 0.1}, "flagged": False}],
        "redacted": False,
    }


SOURCE_CASES: dict[str, tuple[Mutation, str | None]] = {
    "redacted 'yes'": (_set("redacted", "yes"), "redacted"),
    "redacted 1": (_set("redacted", 1), "redacted"),
    "redacted 'false'": (_set("redacted", "false"), "redacted"),
    "turn string": (_set("turn", "1"), "turn"),
    "turn zero": (_set("turn", 0), "turn"),
    "no messages": (_set("conversation", []), "conversation"),
    "flagged string": (_set("openai_moderation.0.flagged", "false"), "openai_moderation[0].flagged"),
    "category 1": (_set("openai_moderation.0.categories.hate", 1), "openai_moderation[0].categories.hate"),
    "score string": (
        _set("openai_moderation.0.category_scores.hate", "0.1"),
        "openai_moderation[0].category_scores.hate",
    ),
    "language missing": (_set("language", ...), "language"),
    "id missing": (_set("conversation_id", ...), "conversation_id"),
    "content missing": (_set("conversation.0.content", ...), "conversation[0].content"),
    "not JSON": (_raw("{"), None),
    "repeated id": (_set("conversation_id", "c0000"), "conversation_id"),
}


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_bad_source_row(tmp_path: Path, case: str) -> None:
    mutate, field = SOURCE_CASES[case]
    rows = [json.dumps(_source_row(i)) for i in range(5)]
    new = mutate(_source_row(3))
    rows[3] = new if isinstance(new, str) else json.dumps(new)
    src = tmp_path / "src.jsonl"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(LmsynthError) as info:
        prepare(str(src), out_dir=tmp_path / "prepared")
    _assert_one_line(info.value, file="src.jsonl", where="line 4", field=field)
    assert not (tmp_path / "prepared").exists()


# ---------------------------------------------------------------------------
# Release manifest (YAML) and MANIFEST.json: 6 kinds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("multiturn", "yes", "multiturn"),
        ("multiturn", 1, "multiturn"),
        ("generation.n", "6", "generation.n"),
        ("generation.n", 6.5, "generation.n"),
    ],
)
def test_bad_release_manifest_field(tmp_path: Path, key: str, value: object, field: str) -> None:
    data = yaml.safe_load((constants.RELEASE_DIR / "v0.5.yaml").read_text(encoding="utf-8"))
    _set(key, value)(data["subsets"][1])
    path = tmp_path / "v0.5.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(LmsynthError) as info:
        load_manifest(path)
    _assert_one_line(info.value, file=str(path), where=f"subsets[{data['subsets'][1]['config']}]", field=None)
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: m["files"]["README.md"].update(size="12"), "files.README.md.size"),
        (lambda m: m.update(format_version="1"), "format_version"),
    ],
    ids=["size string", "format string"],
)
def test_bad_checksum_manifest_field(tmp_path: Path, mutate: Callable, field: str) -> None:
    tree = write_tree(tmp_path / "tree")
    data = json.loads((tree / layout.MANIFEST_FILE).read_text())
    mutate(data)
    (tree / layout.MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(LmsynthError) as info:
        check_tree(tree)
    _assert_one_line(info.value, file=layout.MANIFEST_FILE, where=None, field=field)


# ---------------------------------------------------------------------------
# Empty inputs: 4 kinds
# ---------------------------------------------------------------------------


def test_empty_records_file_is_refused(small_project: Path) -> None:
    shard = next((small_project / "runs" / "gemma-3" / RUN_RECORDS_DIR).glob("*.jsonl"))
    shard.write_text("", encoding="utf-8")
    with pytest.raises(LmsynthError) as info:
        _release(small_project)
    _assert_one_line(info.value, file=str(Path("runs/gemma-3") / RUN_RECORDS_DIR / shard.name), where=None, field=None)
    assert "no records" in str(info.value) and not (small_project / "build").exists()


def test_blank_lines_only_records_file_is_refused(small_project: Path) -> None:
    shard = next((small_project / "runs" / "gemma-3" / RUN_RECORDS_DIR).glob("*.jsonl"))
    shard.write_text("\n\n", encoding="utf-8")
    with pytest.raises(LmsynthError, match="no records"):
        _release(small_project)


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl"])
def test_empty_source_is_refused_by_prepare_and_key(tmp_path: Path, name: str) -> None:
    src = tmp_path / name
    src.write_text("" if name == "empty.jsonl" else "\n \n", encoding="utf-8")
    for run in (lambda: prepare(str(src), out_dir=tmp_path / "prepared"), lambda: derive_key(str(src))):
        with pytest.raises(LmsynthError) as info:
            run()
        _assert_one_line(info.value, file=str(src), where=None, field=None)
        assert "no conversations" in str(info.value)
    assert not (tmp_path / "prepared").exists()


def test_key_command_on_an_empty_source_prints_no_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    src = tmp_path / "empty.jsonl"
    src.write_text("", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "lmsynth", "key", "--source", str(src)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"Error: {src}: holds no conversations" in proc.stderr


def test_prepared_helper_writes_the_marker(tmp_path: Path) -> None:
    assert (write_prepared_dir(tmp_path / "p", 2) / "_COMPLETE").is_file()
