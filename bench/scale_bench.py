"""Scaling overheads on this machine: Ray mode vs local mode, and 3 shards + gather vs one unsharded run.

Runs the demo-sized pipeline shape (translate → flags → generate n=2 + EN → judge → select) with the fake
backend, so the figures measure lmsynth + distilabel + Ray orchestration, not model speed. Each mode runs
with a fresh cache. Prints a table of wall times and ratios.

    .venv/bin/python bench/scale_bench.py [--instructions 24] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


FAKE_PIPELINE = """\
name: bench-fake
batch_size: {batch_size}
models:
  f:
    backend: fake
    replies: ["回答です。 Rating: [[7]]"]
  t:
    backend: fake
    replies: ["訳 {{last_line}}"]
translate: {{model: t, prompt: {prompt}}}
generate: {{model: f, sampling: {{n: 2, max_tokens: 50}}, english: {{n: 1}}}}
judge: {{mode: single, model: f}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", type=int, default=24, help="Prepared instructions (demo-sized).")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="Runs per mode; the best wall time is kept.")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="lmscale", dir="/tmp"))
    # Ray writes a token under ~ and would report usage: keep both local to this run.
    os.environ.update({"HOME": str(root / "home"), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        rows = run_bench(root, args.instructions, args.shards, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nScale bench: {args.instructions} instructions, fake backend, best of {args.repeats}")
    print(f"{'mode':<34}{'wall s':>10}{'ratio':>10}")
    for name, wall, ratio in rows:
        print(f"{name:<34}{wall:>10.3f}{ratio:>10}")


def run_bench(root: Path, n: int, shards: int, repeats: int) -> list[tuple[str, float, str]]:
    from lmsynth import constants
    from lmsynth.pipeline.executor.on_ray import RayOptions
    from lmsynth.pipeline.output.gather import gather
    from lmsynth.pipeline.run import run_pipeline
    from lmsynth.pipeline.shard import ShardSpec, run_shard
    from lmsynth.records import iter_synth_records
    from lmsynth.testing import write_prepared_dir

    prep = write_prepared_dir(root / "prep", n)
    pipe = root / "fake.yaml"
    prompt = constants.PIPELINES_DIR / "prompts" / "translate_en_ja.txt"
    pipe.write_text(FAKE_PIPELINE.format(batch_size=8, prompt=prompt))
    counter = iter(range(10_000))

    def fresh(name: str) -> Path:
        return root / f"{name}-{next(counter)}"

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    local_out = {}
    gather_s: list[float] = []

    def local() -> None:
        out = fresh("local")
        run_pipeline(pipe, input_dir=prep, out_dir=out, cache_dir=fresh("cache"))
        local_out["dir"] = out

    def on_ray() -> None:
        opts = RayOptions(num_cpus=2, temp_dir=str(fresh("r")))
        run_pipeline(pipe, input_dir=prep, out_dir=fresh("ray"), cache_dir=fresh("cache"), ray=opts)

    def sharded() -> None:
        cache = fresh("cache")
        dirs = []
        for k in range(1, shards + 1):
            d = fresh(f"shard{k}")
            run_shard(pipe, input_dir=prep, out_dir=d, shard=ShardSpec(index=k, count=shards), cache_dir=cache)
            dirs.append(d)
        out = fresh("gathered")
        t = time.perf_counter()
        gather(dirs, out_dir=out)
        gather_s.append(time.perf_counter() - t)
        assert list(iter_synth_records(out)) == list(iter_synth_records(local_out["dir"]))

    t_local = best(local)
    t_ray = best(on_ray)
    t_shard = best(sharded)
    return [
        ("local (distilabel processes)", t_local, "1.00"),
        ("Ray, local 2-CPU cluster", t_ray, f"{t_ray / t_local:.2f}"),
        (f"{shards} shards in sequence + gather", t_shard, f"{t_shard / t_local:.2f}"),
        ("  of which gather", min(gather_s), f"{min(gather_s) / t_local:.3f}"),
    ]


if __name__ == "__main__":
    main()
