"""Orchestration cost of `lmsynth run` at scale: the v0.5 pipeline with scripted models, two input sizes.

Takes `pipelines/v0.5-gemma3.yaml` as it is (translate → flags → generate n=10 → judge → select) and swaps its
model for scripted `backend: fake` models: translation echoes the instruction, each of the 10 responses is
~800 Japanese characters, the judge answers a short judgement with `[[7]]`. So the figures measure lmsynth
and distilabel, not a model. Instructions are synthesized in the prepared-folder schema
(`lmsynth.testing.write_prepared_dir`, no LMSYS text). Each size runs `lmsynth run` in a fresh process with
a fresh cache; the bench samples the RSS (and PSS, which counts shared pages once) of that process and all
of its children every 0.2 s, and sums the CPU time each of those processes was last seen with: CPU time is
what a busy shared machine does not inflate the way it inflates wall time.

    .venv/bin/python bench/stream_bench.py [--sizes 5000,20000]

Prints per size: wall time, CPU time, peak RSS and PSS of the process tree, and between the smallest and
largest size the marginal cost per instruction ((big - small) difference / instructions added) and the RSS
ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from lmsynth.testing import SCRIPTED_RESPONSE, write_scripted_pipeline


REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "v0.5-gemma3.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000", help="Comma-separated instruction counts, run in order.")
    parser.add_argument("--window", type=int, default=None, help="Override the pipeline's `window` (rows at once).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder (printed).")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    root = Path(tempfile.mkdtemp(prefix="lmstream", dir="/tmp"))
    try:
        pipe = write_scripted_pipeline(PIPELINE, root, window=args.window)
        rows = []
        for n in sizes:
            run = run_once(root, pipe, n)
            rows.append(run)
            print(f"  {n} instructions: {run}", flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    replies = f"replies of {len(SCRIPTED_RESPONSE)} JA characters"
    print(f"\nStream bench: {PIPELINE.name} with scripted models ({replies}, n=10)")
    head = ("instructions", "wall s", "CPU s", "wall ms/i", "CPU ms/i", "RSS MiB", "PSS MiB")
    print("".join(f"{h:>{w}}" for h, w in zip(head, (12, 9, 9, 11, 10, 9, 9), strict=True)))
    for r in rows:
        print(
            f"{r.n:>12}{r.wall:>9.1f}{r.cpu:>9.1f}{r.wall / r.n * 1000:>11.2f}{r.cpu / r.n * 1000:>10.2f}"
            f"{r.rss / 2**20:>9.0f}{r.pss / 2**20:>9.0f}"
        )
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        added = b.n - a.n
        print(
            f"marginal cost {a.n}→{b.n}: {(b.wall - a.wall) / added * 1000:.2f} ms wall, "
            f"{(b.cpu - a.cpu) / added * 1000:.2f} ms CPU per instruction (target ≤ 3)"
        )
        print(f"peak RSS ratio {b.n}/{a.n}: {b.rss / a.rss:.2f}× (target ≤ 1.3×), {b.rss / 2**30:.2f} GiB at {b.n}")
        print(f"(PSS, shared pages counted once: {b.pss / 2**30:.2f} GiB at {b.n}; target ≤ 2 GiB)")


class Run:
    """The figures of one size."""

    def __init__(self, n: int, wall: float, cpu: float, rss: int, pss: int, records: int) -> None:
        self.n, self.wall, self.cpu, self.rss, self.pss, self.records = n, wall, cpu, rss, pss, records

    def __str__(self) -> str:
        return (
            f"{self.wall:.1f} s wall, {self.cpu:.1f} s CPU, peak RSS {self.rss / 2**20:.0f} MiB "
            f"(PSS {self.pss / 2**20:.0f} MiB), {self.records} records"
        )


def run_once(root: Path, pipe: Path, n: int) -> Run:
    """One `lmsynth run` on `n` fresh instructions with a fresh cache."""
    from lmsynth.records import iter_synth_records
    from lmsynth.testing import write_prepared_dir

    prep = write_prepared_dir(root / f"prep-{n}", n)
    out, cache = root / f"run-{n}", root / f"cache-{n}"
    env = {**os.environ, "LMSYNTH_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rss = pss = 0
    cpu_by_pid: dict[int, float] = {}
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        sample_rss, sample_pss = tree_memory(parent, cpu_by_pid)
        rss, pss = max(rss, sample_rss), max(pss, sample_pss)
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    cpu = sum(cpu_by_pid.values())
    err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"lmsynth run failed at {n} instructions (exit {proc.returncode}):\n{err[-3000:]}")
    records = sum(1 for _ in iter_synth_records(out))
    shutil.rmtree(cache, ignore_errors=True)
    return Run(n, wall, cpu, rss, pss, records)


def tree_memory(proc: psutil.Process, cpu_by_pid: dict[int, float]) -> tuple[int, int]:
    """RSS and PSS summed over a process and its descendants (processes that vanish mid-read count as 0).

    Also records each process's CPU time so far into `cpu_by_pid`.
    """
    rss = pss = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            info = p.memory_full_info()
            times = p.cpu_times()
        except psutil.Error:
            continue
        cpu_by_pid[p.pid] = times.user + times.system
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


if __name__ == "__main__":
    main()
