"""Release build benchmark: records/s, MB/s and peak RSS at 20k and 100k v0.5-shaped records, against a naive baseline.

The input is a synthetic v0.5 run folder (`lmsynth.testing.write_run_dir`: 10 JA responses of realistic length
per record, scoring annotations, empty and duplicate instructions). Each measurement runs in a fresh Python
process, so peak RSS (`ru_maxrss`) belongs to that build alone:

- `lmsynth`: `build_release(..., dry_run=True)` — the whole build: validation, Parquet shards, gated
  files sorted, gzipped and encrypted, figures, cards, leak guard, MANIFEST.json (no publish).
- `baseline`: read the same JSONL, build a `datasets.Dataset` in memory and call `to_parquet` (public fields only).

MB/s is input JSONL bytes per second. The baseline holds every row in memory, so it is skipped above
200,000 records: `--sizes 487370` (the full v0.5 size) measures lmsynth alone, against its targets (≤ 60 s,
peak RSS < 1 GB on 2 cores). CPU s (user + system of the build's process) is less sensitive than the wall
time to other load on the machine; on 2 idle cores the wall time is about CPU s / 2 when both are busy. Usage:

    python bench/release_bench.py [--sizes 20000 100000] [--work DIR] [--no-baseline]
    python bench/release_bench.py --sizes 487370
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
BASELINE_MAX = 200_000  # records; above this the naive baseline holds too much in memory to run
TARGET_SECONDS, TARGET_RSS = 60, 10**9  # the full v0.5 size (487,370 records)

CHILD_LMSYNTH = r"""
import json, resource, sys, time, yaml
from pathlib import Path
from pydantic import SecretStr
from lmsynth.config import read_yaml
from lmsynth.release.build import build_release
run, work = Path(sys.argv[1]), Path(sys.argv[2])
manifest = read_yaml(Path(sys.argv[3]) / "release" / "v0.5.yaml")
manifest["subsets"] = [s for s in manifest["subsets"] if s["config"] == "gemma-3"]
manifest["subsets"][0].update(records=str(run), prepared=None, pipelines=[])
(work / "m.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True))
t = time.perf_counter()
res = build_release("v0.5", manifest_path=work / "m.yaml", target=str(work / "hub"), dry_run=True,
                    passphrase=SecretStr("bench-passphrase"))
elapsed = time.perf_counter() - t
use = resource.getrusage(resource.RUSAGE_SELF)
rss, cpu = use.ru_maxrss * 1024, use.ru_utime + use.ru_stime
print(json.dumps({"seconds": elapsed, "cpu": cpu, "rss": rss, "records": res.counts["gemma-3"].records,
                  "out_bytes": res.bytes}))
"""

CHILD_BASELINE = r"""
import json, resource, sys, time
from pathlib import Path
import datasets
datasets.disable_progress_bars()
run, work = Path(sys.argv[1]), Path(sys.argv[2])
t = time.perf_counter()
rows = []
for f in sorted((run / "records").glob("*.jsonl")):
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            rec.pop("translated_conversation", None)
            rows.append(rec)
ds = datasets.Dataset.from_list(rows)
ds.to_parquet(str(work / "baseline.parquet"))
elapsed = time.perf_counter() - t
use = resource.getrusage(resource.RUSAGE_SELF)
rss, cpu = use.ru_maxrss * 1024, use.ru_utime + use.ru_stime
out_bytes = (work / "baseline.parquet").stat().st_size
print(json.dumps({"seconds": elapsed, "cpu": cpu, "rss": rss, "records": len(ds), "out_bytes": out_bytes}))
"""


def main() -> None:
    """Generate the inputs, run every measurement in a fresh process, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--work", type=Path, default=None, help="Keep inputs here (default: a temporary folder).")
    parser.add_argument("--no-baseline", action="store_true", help="Measure lmsynth alone.")
    args = parser.parse_args()
    if args.work is not None:
        _measure(args, args.work)
        return
    with tempfile.TemporaryDirectory(prefix="lmsynth-bench-") as tmp:  # the full size is 7.9 GB of input
        _measure(args, Path(tmp))


def _measure(args: argparse.Namespace, work_root: Path) -> None:
    from lmsynth.testing import write_run_dir

    rows = []
    for n in args.sizes:
        run = work_root / f"run-{n}"
        if not (run / "run.json").is_file():
            print(f"writing {n:,} synthetic v0.5 records to {run} ...", file=sys.stderr, flush=True)
            write_run_dir(run, n, shape="v0.5", seed=0, unsafe_n=n // 100)
        in_bytes = sum(f.stat().st_size for f in (run / "records").glob("*.jsonl"))
        baseline = n <= BASELINE_MAX and not args.no_baseline
        builds = [("lmsynth", CHILD_LMSYNTH)] + ([("baseline", CHILD_BASELINE)] if baseline else [])
        for name, code in builds:
            work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work_root))
            print(f"{name} at {n:,} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(
                [sys.executable, "-c", code, str(run), str(work), str(ROOT)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                sys.exit(f"{name} at {n} failed:\n{proc.stderr[-3000:]}")
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(
                (
                    name,
                    n,
                    m["seconds"],
                    m["records"] / m["seconds"],
                    in_bytes / m["seconds"] / 1e6,
                    m["rss"],
                    m["out_bytes"],
                    m["cpu"],
                )
            )
            subprocess.run(["rm", "-rf", str(work)], check=False)
    header = ("build", "records", "input MB", "seconds", "CPU s", "records/s", "MB/s", "peak RSS MiB", "output MB")
    print("\n{:<9} {:>8} {:>9} {:>8} {:>7} {:>10} {:>7} {:>13} {:>11}".format(*header))
    for name, n, secs, rps, mbs, rss, out, cpu in rows:
        in_mb = sum(f.stat().st_size for f in (work_root / f"run-{n}" / "records").glob("*.jsonl")) / 1e6
        cells = (name, f"{n:,}", f"{in_mb:.0f}", f"{secs:.1f}", f"{cpu:.1f}", f"{rps:,.0f}", f"{mbs:.1f}")
        print("{:<9} {:>8} {:>9} {:>8} {:>7} {:>10} {:>7}".format(*cells), f"{rss / 2**20:>13.0f} {out / 1e6:>11.1f}")
    by = {(name, n): (secs, rps, rss) for name, n, secs, rps, _, rss, _, _ in rows}
    for n in args.sizes:
        secs, rps, rss = by[("lmsynth", n)]
        if ("baseline", n) in by:
            print(f"{n:,} records: lmsynth / baseline records/s = {rps / by[('baseline', n)][1]:.2f}x")
        else:
            ok = secs <= TARGET_SECONDS and rss < TARGET_RSS
            print(
                f"{n:,} records: {secs:.0f} s (target ≤ {TARGET_SECONDS} s), peak RSS {rss / 1e9:.2f} GB "
                f"(target < 1 GB): {'met' if ok else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
