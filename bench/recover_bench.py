"""Benchmark `recover` + `export sft` + `export dpo` on synthetic v0.5-shaped releases: time and peak RSS.

For each size N it builds (untimed) a release tree in the `lmsynth.tree.layout` layout from
`lmsynth.testing.iter_run_dicts` records (10 JA responses of realistic length with scoring annotations,
planted empty/duplicate instructions): public Parquet shards without gated text, the gated JA instructions
encrypted with GnuPG, MANIFEST.json, plus an LMSYS-schema source JSONL holding the English originals in
shuffled order. Then each step runs in a fresh child process, so each peak RSS is that step's alone.
The target: peak RSS flat as N grows (everything streams; the keyed parts sit in an on-disk SQLite store).

Usage: `python bench/recover_bench.py [--sizes 10000 100000] [--workdir DIR]`
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


CONFIG = "gemma3"
PASSPHRASE = "bench-passphrase"
SHARD_ROWS = 10_000

CHILD = r"""
import json, sys, time
from pathlib import Path
from pydantic import SecretStr
step, tree, source, work = sys.argv[1:5]
t0 = time.perf_counter()
if step == "recover":
    import lmsynth.targets.base as base
    from lmsynth.recover import recover
    class Folder:
        uri = tree
        def download(self, tag, dest):
            return Path(tree)
    base.open_target = lambda uri: Folder()
    res = recover(tree, revision="v0.5", source=source, out_dir=Path(work) / "recovered",
                  passphrase=SecretStr(sys.argv[5]))
    rows = sum(s.written for s in res.report.subsets.values())
elif step == "export-sft":
    from lmsynth.export.sft_dpo import export_sft
    res = export_sft(Path(work) / "recovered", out_dir=Path(work) / "sft", test_size=0.01)
    rows = sum(res.rows.values())
else:
    from lmsynth.export.sft_dpo import export_dpo
    res = export_dpo(Path(work) / "recovered", out_dir=Path(work) / "dpo", test_size=0.01)
    rows = sum(res.rows.values())
secs = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would report the parent's size.
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"seconds": secs, "rows": rows, "peak_rss_mb": hwm / 1024}))
"""


def build_release(root: Path, n: int) -> tuple[Path, Path]:
    """Write the release tree and the source for `n` records; return (tree, source file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pydantic import SecretStr

    from lmsynth import __version__
    from lmsynth.crypto import encrypt_file
    from lmsynth.io import sha256_file
    from lmsynth.testing import en_instruction_for, iter_run_dicts
    from lmsynth.tree import layout
    from lmsynth.tree.manifest_json import ChecksumManifest

    tree = root / "tree"
    n_shards = (n + SHARD_ROWS - 1) // SHARD_ROWS
    gated: list[tuple[str, str]] = []
    batch: list[dict] = []
    shard = 0
    for rec in iter_run_dicts(n, shape="v0.5", seed=7):
        gated.append((rec["conversation_id"], rec.pop("translated_conversation")[0]["content"]))
        batch.append(rec)
        if len(batch) == SHARD_ROWS:
            _write_shard(pq, pa, tree / layout.shard_path(CONFIG, shard, n_shards), batch)
            batch, shard = [], shard + 1
    if batch:
        _write_shard(pq, pa, tree / layout.shard_path(CONFIG, shard, n_shards), batch)
    plain = root / "gated.jsonl.gz"
    with gzip.open(plain, "wt", encoding="utf-8") as f:
        for cid, text in sorted(gated):
            f.write(
                json.dumps({"conversation_id": cid, "translated_conversation": [{"role": "user", "content": text}]})
            )
            f.write("\n")
    paths = {}
    for name in ("default", "unsafe"):
        rel = layout.gated_path(CONFIG, unsafe=name == "unsafe")
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        encrypt_file(plain, tree / rel, passphrase=SecretStr(PASSPHRASE))
        paths[name] = rel
    ids = [cid for cid, _ in gated]
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
    files = {
        p.relative_to(tree).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(tree.rglob("*"))
        if p.is_file()
    }
    lic = {"id": "other", "name": "Gemma Terms of Use", "link": "https://ai.google.dev/gemma/terms", "notice": "-"}
    model = {"id": "google/gemma-3-27b-it", "link": "https://huggingface.co/google/gemma-3-27b-it"}
    counts = {"records": n, "instructions_ja": n, "responses_ja": 0, "gated_default": n, "gated_unsafe": n}
    info = {"title": "bench", "generator": model, "judge": model, "license": lic, "counts": counts}
    manifest = ChecksumManifest.model_validate(
        {
            "version": "v0.5",
            "tool_version": __version__,
            "subsets": {CONFIG: {**info, "shards": [], "gated": paths}},
            "files": files,
        }
    )
    (tree / layout.MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return tree, source


def run_step(step: str, tree: Path, source: Path, work: Path) -> dict:
    """Run one step in a fresh interpreter and return its figures."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, step, str(tree), str(source), str(work), PASSPHRASE],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="recover-bench-", dir=args.workdir) as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"n{n}"
            t0 = time.perf_counter()
            tree, source = build_release(root, n)
            size_mb = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file()) / 2**20
            print(f"built N={n:,}: release {size_mb:,.0f} MB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for step in ("recover", "export-sft", "export-dpo"):
                fig = run_step(step, tree, source, root)
                results.append((n, step, fig))
                print(f"  {step}: {fig}", file=sys.stderr)
    print(f"{'records':>9} {'step':<11} {'seconds':>8} {'records/s':>10} {'rows out':>9} {'peak RSS MB':>12}")
    for n, step, fig in results:
        rate = n / fig["seconds"] if fig["seconds"] else float("inf")
        print(
            f"{n:>9,} {step:<11} {fig['seconds']:>8.1f} {rate:>10,.0f} {fig['rows']:>9,} {fig['peak_rss_mb']:>12.0f}"
        )


# Private helpers


def _write_shard(pq, pa, path: Path, rows: list[dict]) -> None:  # noqa: ANN001 — pyarrow modules passed in
    path.parent.mkdir(parents=True, exist_ok=True)
    # 1,000-row groups, as the release builder writes them (lmsynth.release.data_files.ROWS_PER_GROUP).
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd", row_group_size=1_000)


if __name__ == "__main__":
    main()
