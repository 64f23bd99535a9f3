"""What changes a fingerprint and what does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmsynth import constants
from lmsynth.fingerprint import FINGERPRINT_VERSION, digest_rows, fingerprint
from lmsynth.pipeline.config import PipelineConfig, run_fingerprint, stage_fingerprint


def make_config(**over) -> PipelineConfig:
    data = {
        "name": "t",
        "models": {"m": {"backend": "vllm", "model": "org/model", "revision": "abc"}},
        "translate": {"model": "m"},
        "generate": {"model": "m", "sampling": {"n": 2, "max_tokens": 64, "temperature": 0.6}},
        "judge": {"mode": "single", "model": "m"},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            data[section] = {**data[section], field: value}
        else:
            data[section] = value
    return PipelineConfig.model_validate(data)


def gen_fp(**over) -> str:
    return stage_fingerprint(make_config(**over), "generate")


def test_version_is_an_int() -> None:
    assert isinstance(FINGERPRINT_VERSION, int)


def test_same_config_same_fingerprint() -> None:
    assert gen_fp() == gen_fp()


def test_changing_temperature_changes_fingerprint() -> None:
    assert gen_fp(generate__sampling={"n": 2, "max_tokens": 64, "temperature": 0.7}) != gen_fp()


def test_changing_n_changes_fingerprint() -> None:
    assert gen_fp(generate__sampling={"n": 3, "max_tokens": 64, "temperature": 0.6}) != gen_fp()


def test_changing_model_revision_changes_fingerprint() -> None:
    models = {"m": {"backend": "vllm", "model": "org/model", "revision": "def"}}
    assert gen_fp(models=models) != gen_fp()


def test_changing_model_id_changes_fingerprint() -> None:
    models = {"m": {"backend": "vllm", "model": "org/other", "revision": "abc"}}
    assert gen_fp(models=models) != gen_fp()


def test_batch_size_does_not_change_fingerprint() -> None:
    assert gen_fp(batch_size=7) == gen_fp()


@pytest.mark.parametrize(
    "engine",
    [{"max_num_seqs": 8}, {"kv_cache_memory_bytes": 1 << 26}, {"tensor_parallel_size": 8}, {"enforce_eager": True}],
)
def test_engine_sizing_does_not_change_fingerprint(engine: dict) -> None:
    models = {"m": {"backend": "vllm", "model": "org/model", "revision": "abc", **engine}}
    assert gen_fp(models=models) == gen_fp()


def test_openai_concurrency_and_urls_do_not_change_fingerprint() -> None:
    a = {"m": {"backend": "openai", "model": "x", "base_urls": ["http://a/v1"], "max_concurrency": 4}}
    b = {"m": {"backend": "openai", "model": "x", "base_urls": ["http://b/v1", "http://c/v1"], "max_concurrency": 64}}
    assert gen_fp(models=a) == gen_fp(models=b)


def test_judge_change_does_not_change_generate_fingerprint() -> None:
    cfg = make_config(judge={"mode": "single", "model": "m", "sampling": {"temperature": 0.3}})
    assert stage_fingerprint(cfg, "generate") == gen_fp()
    assert stage_fingerprint(cfg, "judge") != stage_fingerprint(make_config(), "judge")


def test_prompt_text_changes_fingerprint_but_its_path_does_not(tmp_path: Path) -> None:
    src = constants.PIPELINES_DIR / "prompts" / "translate_en_ja.txt"
    same = tmp_path / "same.txt"
    same.write_text(src.read_text())
    edited = tmp_path / "edited.txt"
    edited.write_text(src.read_text() + "\nBe formal.")
    base = stage_fingerprint(make_config(), "translate")
    assert stage_fingerprint(make_config(translate={"model": "m", "prompt": str(same)}), "translate") == base
    assert stage_fingerprint(make_config(translate={"model": "m", "prompt": str(edited)}), "translate") != base


def test_input_digest_is_part_of_run_fingerprint() -> None:
    cfg = make_config()
    assert run_fingerprint(cfg, input_digest="a") != run_fingerprint(cfg, input_digest="b")


def test_none_and_empty_are_collapsed() -> None:
    assert fingerprint({"a": 1, "b": None, "c": []}, input_digest=None) == fingerprint({"a": 1}, input_digest=None)


def test_row_order_matters_for_digest() -> None:
    assert digest_rows([{"a": 1}, {"a": 2}]) != digest_rows([{"a": 2}, {"a": 1}])


def test_deterministic_across_processes() -> None:
    code = "from tests.test_fingerprint import gen_fp; print(gen_fp())"
    root = Path(__file__).resolve().parent.parent
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
        for _ in range(2)
    }
    assert outs == {gen_fp() + "\n"}
