"""Upload a ~200 MB Parquet release to the local Hub stand-in: lmsynth's HF target vs `Dataset.push_to_hub`.

Prints wall time, peak RSS of the uploading process and the number of commits each made. Each upload runs
in its own process (so RSS is its own) against a stand-in server in a third process.

    .venv/bin/python bench/upload_bench.py [--mb 200] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
CONFIG = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200, help="Approximate Parquet size in MB.")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--worker", choices=["lmsynth", "push_to_hub"], default=None)
    parser.add_argument("--tree", type=Path, default=None)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker, args.tree)
    with tempfile.TemporaryDirectory(prefix="upload-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        tree = _write_tree(tmp / "tree", mb=args.mb, shards=args.shards)
        size = sum(p.stat().st_size for p in tree.rglob("*.parquet"))
        print(
            f"release tree: {size / 1e6:.0f} MB of Parquet in {args.shards} shards",
            f"(built in {time.perf_counter() - t0:.1f}s)",
        )
        (tmp / "blobs").mkdir()
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.hub.hf_server", "--root", str(tmp / "blobs")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            endpoint = server.stdout.readline().strip()
            env = {
                **os.environ,
                "HF_ENDPOINT": endpoint,
                "HF_HUB_DISABLE_XET": "1",
                "HF_TOKEN": "hf_bench_token",
                "HF_HOME": str(tmp / "hf"),
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "LMSYNTH_HUB_RETRIES": "1",
            }
            rows = []
            for worker in ("lmsynth", "push_to_hub"):
                res = subprocess.run(
                    [sys.executable, __file__, "--worker", worker, "--tree", str(tree)],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            stats = json.loads(urllib.request.urlopen(f"{endpoint}/_standin/stats").read())
        finally:
            server.terminate()
            server.wait()
    print()
    print(f"{'method':<34} {'time (s)':>9} {'peak RSS (MB)':>14} {'commits':>8}")
    for row in rows:
        commits = stats.get(f"dataset/{row['repo']}", "?")
        print(f"{row['method']:<34} {row['seconds']:>9.1f} {row['peak_rss_mb']:>14.0f} {commits:>8}")


# Private helpers


def _write_tree(root: Path, *, mb: int, shards: int) -> Path:
    """A release tree: card with configs, incompressible Parquet shards, MANIFEST.json."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT))
    from tests.hub.trees import write_manifest

    rng = np.random.default_rng(0)
    per_shard = mb * 1_000_000 // shards
    rows = per_shard // 390  # ~375 random bytes per row once zstd has squeezed the hex
    (root / "data" / CONFIG).mkdir(parents=True)
    for i in range(shards):
        text = [rng.bytes(375).hex() for _ in range(rows)]  # 750 random hex chars: little compression
        table = pa.table(
            {
                "conversation_id": [f"{i}-{j}" for j in range(rows)],
                "response": text,
                "preference_score": rng.random(rows),
            }
        )
        pq.write_table(table, root / "data" / CONFIG / f"train-{i:05d}-of-{shards:05d}.parquet", compression="zstd")
    card = {
        "configs": [
            {"config_name": CONFIG, "data_files": [{"split": "train", "path": f"data/{CONFIG}/train-*.parquet"}]}
        ]
    }
    import yaml

    (root / "README.md").write_text(f"---\n{yaml.safe_dump(card)}---\n\n# Bench\n")
    write_manifest(root, version="v0.5", configs=())
    return root


def _worker(method: str, tree: Path) -> None:
    t0 = time.perf_counter()
    if method == "lmsynth":
        from lmsynth.release.publish import publish_tree

        repo = "bench/lmsynth"
        publish_tree(tree, to=f"hf://{repo}", tag="v0.5")
        label = "lmsynth publish (1 commit + tag)"
    else:
        from datasets import Dataset

        repo = "bench/push-to-hub"
        shards = sorted(str(p) for p in (tree / "data" / CONFIG).glob("*.parquet"))
        ds = Dataset.from_parquet(shards)
        ds.push_to_hub(repo, config_name=CONFIG, num_shards=len(shards))
        label = "datasets Dataset.push_to_hub"
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": label, "repo": repo, "seconds": seconds, "peak_rss_mb": peak}))


if __name__ == "__main__":
    main()
