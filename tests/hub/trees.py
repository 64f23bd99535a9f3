"""Small release trees written by the tests: a card with `configs:`, Parquet shards, a `.gpg` file, MANIFEST.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml


CONFIG = "gemma3"


def write_tree(
    root: Path, *, version: str = "v0.5", rows: int = 5, seed: str = "a", configs: tuple[str, ...] = (CONFIG,)
) -> Path:
    """A release tree with `rows` rows per config; `seed` changes the content, so two seeds differ."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    card = {
        "license": "other",
        "license_name": "mixed",
        "language": ["ja"],
        "pretty_name": "Test synth",
        "configs": [
            {
                "config_name": c,
                "data_files": [{"split": "train", "path": f"data/{c}/train-*.parquet"}],
                "default": i == 0,
            }
            for i, c in enumerate(configs)
        ],
    }
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n\n# Test {version}\n")
    for c in configs:
        table = pa.table(
            {
                "conversation_id": [f"{seed}-{c}-{i}" for i in range(rows)],
                "preference_score": [float(i % 11) for i in range(rows)],
            }
        )
        shard = root / "data" / c / "train-00000-of-00001.parquet"
        shard.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, shard)
        gpg = root / "dataset" / c / "lmsys-chat-1m-first-turn-user-instructions-ja.jsonl.gz.gpg"
        gpg.parent.mkdir(parents=True, exist_ok=True)
        gpg.write_bytes(hashlib.sha256(f"{seed}{c}".encode()).digest() * 64)
    write_manifest(root, version=version, configs=configs, rows=rows)
    return root


def write_manifest(root: Path, *, version: str, configs: tuple[str, ...] = (CONFIG,), rows: int = 5) -> None:
    """(Re)write MANIFEST.json for every file of `root`."""
    from lmsynth.io import sha256_file
    from lmsynth.tree.manifest_json import ChecksumManifest

    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.json"
    }
    model = {"id": "org/model", "link": "https://example.org/model"}
    subsets = {
        c: {
            "title": c,
            "generator": model,
            "judge": model,
            "license": {"id": "apache-2.0"},
            "counts": {"records": rows, "instructions_ja": rows, "responses_ja": rows, "gated_default": rows},
            "shards": [f"data/{c}/train-00000-of-00001.parquet"],
            "gated": {"default": f"dataset/{c}/lmsys-chat-1m-first-turn-user-instructions-ja.jsonl.gz.gpg"},
        }
        for c in configs
    }
    manifest = ChecksumManifest.model_validate(
        {"version": version, "tool_version": "0.1.0", "subsets": subsets, "files": files}
    )
    (root / "MANIFEST.json").write_text(manifest.to_json())


def parquet_ids(rows: list[dict]) -> list[str]:
    return [r["conversation_id"] for r in rows]


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True)
