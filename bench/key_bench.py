"""Benchmark `lmsynth-key-v1` derivation on synthetic LMSYS-schema rows: time and peak RSS.

Writes N synthetic rows (random 32-hex ids, first turns of 20-600 characters, some Japanese) to a temporary
JSONL file, then derives the key in a fresh child process per setting, so each peak RSS is that run's alone:

- `external`: the default chunked sort (200k pairs per chunk, spilled and merged);
- `in-memory`: one chunk holding every pair (the naive sort, for comparison).

Usage: `python bench/key_bench.py [--rows 1000000] [--chunk-rows 200000] [--skip-in-memory]`
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


WORDS = ("python", "explain", "write", "the", "a", "function", "story", "about", "how", "list", "data", "sort")
JA = ("日本語", "説明して", "ください", "関数", "物語", "について")


def write_source(path: Path, rows: int, *, seed: int = 1) -> None:
    """Stream `rows` synthetic rows into `path`."""
    rng = random.Random(seed)
    mod = [{"flagged": False}, {"flagged": False}]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            vocab = JA if i % 7 == 0 else WORDS
            text = " ".join(rng.choice(vocab) for _ in range(rng.randint(4, 100)))
            row = {
                "conversation_id": f"{rng.getrandbits(128):032x}",
                "model": "vicuna-13b",
                "conversation": [{"content": text, "role": "user"}, {"content": "ok", "role": "assistant"}],
                "turn": 1,
                "language": "Japanese" if i % 7 == 0 else "English",
                "openai_moderation": mod,
                "redacted": False,
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


CHILD = """
import sys, time, resource
from lmsynth.key import derive_key
t = time.perf_counter()
key = derive_key(sys.argv[1], chunk_rows=int(sys.argv[2]), tmp_dir=None)
dt = time.perf_counter() - t
print(f"{dt:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {key.get_secret_value()[:12]}")
"""


def run_child(source: Path, chunk_rows: int) -> tuple[float, float, str]:
    """Derive the key in a child process; return seconds, peak RSS in MiB, and a key prefix."""
    res = subprocess.run([sys.executable, "-c", CHILD, str(source), str(chunk_rows)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    dt, rss_kib, prefix = res.stdout.split()
    return float(dt), int(rss_kib) / 1024, prefix


def main() -> None:
    """Generate the source, run each setting, print one line per setting."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--chunk-rows", type=int, default=200_000)
    ap.add_argument("--skip-in-memory", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmsynth-key-bench-") as tmp:
        src = Path(tmp) / "source.jsonl"
        t = time.perf_counter()
        write_source(src, args.rows)
        size_mb = src.stat().st_size / 1e6
        print(f"source: {args.rows:,} rows, {size_mb:,.0f} MB JSONL, written in {time.perf_counter() - t:.1f}s")
        baseline = run_child_noop()
        print(f"python + lmsynth import baseline peak RSS: {baseline:.0f} MiB")
        settings = [("external", args.chunk_rows)]
        if not args.skip_in_memory:
            settings.append(("in-memory", args.rows + 1))
        for name, chunk in settings:
            dt, rss, prefix = run_child(src, chunk)
            print(
                f"{name:>9} (chunk_rows={chunk:,}): {dt:.1f}s, {args.rows / dt:,.0f} rows/s, "
                f"{size_mb / dt:.1f} MB/s, peak RSS {rss:,.0f} MiB, key {prefix}…"
            )


def run_child_noop() -> float:
    """Peak RSS of a child that only imports lmsynth.key (what the derivation adds is the rest)."""
    code = "import resource, lmsynth.key; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(res.stdout) / 1024


if __name__ == "__main__":
    main()
