"""Orchestration cost of `lmsynth run` at scale: the v0.5 pipeline with scripted models, two input sizes.

Takes `pipelines/v0.5-gemma3.yaml` as it is (translate → flags → generate n=10 → judge → select) and swaps its
model for scripted `backend: fake` models: translation echoes the instruction, each of the 10 responses is
~800 Japanese characters, the judge answers a short judgement with `[[7]]`. So the figures measure lmsynth
and distilabel, not a model. Instructions are synthesized in the prepared-folder schema
(`lmsynth.testing.write_prepared_dir`, no LMSYS text). Each size runs `lmsynth run` in a fresh process with
a fresh cache; the bench samples the RSS of that process and all of its children every 0.2 s.

    .venv/bin/python bench/stream_bench.py [--sizes 5000,20000]

Prints per size: wall time, peak RSS of the process tree, and between the smallest and largest size the
marginal cost per instruction ((wall_big - wall_small) / (big - small)) and the RSS ratio.
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
import yaml


REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "v0.5-gemma3.yaml"
RESPONSE = ("これはテスト用の回答です。" * 64)[:800]  # ~800 Japanese characters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000", help="Comma-separated instruction counts, run in order.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder (printed).")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    root = Path(tempfile.mkdtemp(prefix="lmstream", dir="/tmp"))
    try:
        pipe = write_fake_pipeline(root)
        rows = []
        for n in sizes:
            wall, rss, records = run_once(root, pipe, n)
            rows.append((n, wall, rss))
            print(f"  {n} instructions: {wall:.1f} s, peak RSS {rss / 2**20:.0f} MiB, {records} records", flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\nStream bench: {PIPELINE.name} with scripted models (replies of {len(RESPONSE)} JA characters, n=10)")
    print(f"{'instructions':>12}{'wall s':>10}{'ms/instr':>10}{'peak RSS MiB':>14}")
    for n, wall, rss in rows:
        print(f"{n:>12}{wall:>10.1f}{wall / n * 1000:>10.2f}{rss / 2**20:>14.0f}")
    if len(rows) >= 2:
        (n0, w0, r0), (n1, w1, r1) = rows[0], rows[-1]
        print(f"marginal cost {n0}→{n1}: {(w1 - w0) / (n1 - n0) * 1000:.2f} ms/instruction (target ≤ 3)")
        print(f"peak RSS ratio {n1}/{n0}: {r1 / r0:.2f}× (target ≤ 1.3×), {r1 / 2**30:.2f} GiB at {n1} (target ≤ 2)")


def write_fake_pipeline(root: Path) -> Path:
    """The v0.5 pipeline with its model replaced by three scripted ones (prompt paths made absolute)."""
    config = yaml.safe_load(PIPELINE.read_text(encoding="utf-8"))
    config["models"] = {
        "translator": {"backend": "fake", "model": "fake-translator", "replies": ["{last_line}"]},
        "generator": {"backend": "fake", "model": "fake-generator", "replies": [RESPONSE]},
        "judge": {"backend": "fake", "model": "fake-judge", "replies": ["回答は正確で分かりやすい。Rating: [[7]]"]},
    }
    for stage, model in (("translate", "translator"), ("generate", "generator"), ("judge", "judge")):
        config[stage]["model"] = model
        if "prompt" in config[stage]:
            config[stage]["prompt"] = str(PIPELINE.parent / config[stage]["prompt"])
    path = root / "v0.5-fake.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def run_once(root: Path, pipe: Path, n: int) -> tuple[float, int, int]:
    """One `lmsynth run` on `n` fresh instructions with a fresh cache: (wall s, peak tree RSS, records)."""
    from lmsynth.records import iter_synth_records
    from lmsynth.testing import write_prepared_dir

    prep = write_prepared_dir(root / f"prep-{n}", n)
    out, cache = root / f"run-{n}", root / f"cache-{n}"
    env = {**os.environ, "LMSYNTH_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "lmsynth", "run", str(pipe), "--input", str(prep), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        peak = max(peak, tree_rss(parent))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"lmsynth run failed at {n} instructions (exit {proc.returncode}):\n{err[-3000:]}")
    records = sum(1 for _ in iter_synth_records(out))
    shutil.rmtree(cache, ignore_errors=True)
    return wall, peak, records


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and all of its descendants (processes that vanish mid-read count as 0)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


if __name__ == "__main__":
    main()
