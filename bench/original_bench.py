"""Benchmark `recover` on the original release layout: peak RSS and time as the input grows.

For each size N it writes (untimed) a release in the original tokyotech-llm layout from
`lmsynth.testing.iter_run_dicts` records (Gemma-3 shape: 10 JA responses of realistic length per
instruction, judge failures written as -1, planted empty/duplicate instructions): the public
`dataset/gemma3-lmsys-chat-1m-synth-ja+en.jsonl.gz`, the JA instructions gzipped and encrypted with GnuPG
(`dataset/lmsys-chat-1m-first-turn-user-instructions-ja.jsonl.gz.gpg`), and an LMSYS-schema source holding
the English originals in shuffled order. Then `recover` (and `export dpo` on its result) runs in a fresh
child process, so each peak RSS is that step's alone. The target: peak RSS flat as N grows.

Usage: `python bench/original_bench.py [--sizes 10000 50000] [--workdir DIR]`
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


PASSPHRASE = "bench-passphrase"
FAILED = -1  # how the original release writes a failed judge

CHILD = r"""
import json, sys, time
from pathlib import Path
from pydantic import SecretStr
step, root, source, work = sys.argv[1:5]
t0 = time.perf_counter()
if step == "recover":
    from lmsynth.original.layout import detect
    from lmsynth.original.recover import recover_original
    res = recover_original(detect(root), subsets=["gemma3"], source=source, out_dir=Path(work) / "recovered",
                           passphrase=SecretStr(sys.argv[5]))
    rows = res.report.subsets["gemma3"].written
else:
    from lmsynth.export.sft_dpo import export_dpo
    res = export_dpo(Path(work) / "recovered", out_dir=Path(work) / "dpo")
    rows = sum(res.rows.values())
secs = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent's size.
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"seconds": secs, "rows": rows, "peak_rss_mb": hwm / 1024}))
"""


def build_release(root: Path, n: int) -> tuple[Path, Path, int]:
    """Write the original layout and source for `n` records; return (release, source, public JSONL bytes)."""
    from pydantic import SecretStr

    from lmsynth.crypto import encrypt_file
    from lmsynth.original import layout
    from lmsynth.testing import en_instruction_for, iter_run_dicts

    release = root / "lmsys-chat-1m-synth"
    (release / layout.GATED_DIR).mkdir(parents=True)
    public = release / layout.GATED_DIR / layout.SUBSET_FILES["gemma3"][0]
    plain = root / "ja.jsonl.gz"
    ids: list[str] = []
    raw_bytes = 0
    with gzip.open(public, "wt", encoding="utf-8") as pub, gzip.open(plain, "wt", encoding="utf-8") as ja:
        for rec in iter_run_dicts(n, shape="v0.5", seed=7):
            ids.append(rec["conversation_id"])
            gated = {"conversation_id": rec["conversation_id"]}
            gated["translated_conversation"] = rec.pop("translated_conversation")
            ja.write(json.dumps(gated, ensure_ascii=False) + "\n")
            for ann in rec["synthesized_response_scoring_annotations"]:
                if ann["preference_score"] is None:
                    ann["preference_score"] = FAILED
            line = json.dumps(rec, ensure_ascii=False) + "\n"
            pub.write(line)
            raw_bytes += len(line.encode("utf-8"))
    encrypt_file(plain, release / layout.GATED_DEFAULT, passphrase=SecretStr(PASSPHRASE))
    plain.unlink()
    random.Random(1).shuffle(ids)  # the source is in no useful order
    source = root / "lmsys.jsonl"
    with open(source, "w", encoding="utf-8") as f:
        for cid in ids:
            row = {
                "conversation_id": cid,
                "model": "vicuna-13b",
                "conversation": [{"role": "user", "content": en_instruction_for(cid)}],
                "turn": 1,
                "language": "English",
                "openai_moderation": [{"categories": {}, "category_scores": {}, "flagged": False}],
                "redacted": False,
            }
            f.write(json.dumps(row) + "\n")
    return release, source, raw_bytes


def run_step(step: str, release: Path, source: Path, work: Path) -> dict:
    """Run one step in a fresh interpreter and return its figures."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, step, str(release), str(source), str(work), PASSPHRASE],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="original-bench-", dir=args.workdir) as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"n{n}"
            t0 = time.perf_counter()
            release, source, raw = build_release(root, n)
            gz_mb = sum(p.stat().st_size for p in release.rglob("*") if p.is_file()) / 2**20
            raw_mb = raw / 2**20
            took = time.perf_counter() - t0
            print(f"built N={n:,}: {gz_mb:,.0f} MB gzipped, {raw_mb:,.0f} MB JSONL in {took:.0f} s", file=sys.stderr)
            for step in ("recover", "export-dpo"):
                fig = run_step(step, release, source, root)
                results.append((n, raw_mb, step, fig))
                print(f"  {step}: {fig}", file=sys.stderr)
    print(f"{'records':>9} {'JSONL MB':>9} {'step':<11} {'seconds':>8} {'rows out':>9} {'peak RSS MB':>12}")
    for n, gz_mb, step, fig in results:
        print(
            f"{n:>9,} {gz_mb:>9,.0f} {step:<11} {fig['seconds']:>8.1f} {fig['rows']:>9,} {fig['peak_rss_mb']:>12.0f}"
        )


if __name__ == "__main__":
    main()
