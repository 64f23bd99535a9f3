"""The release's bytes are pinned: a faster builder must write exactly what the line-by-line one wrote.

`GOLDEN_*` are the sha256 (first 128 bits) of every public file (and of the gated plaintexts) as the builder
wrote them for these deterministic inputs before its reading, validation and sorting were vectorised; recorded with the
project's pinned pyarrow (`uv.lock`). Beside the pins, `_reference_subset` is a plain line-by-line
implementation (pydantic per line, `Table.from_pylist`, an in-memory sort) kept here so that the rules the
bytes follow stay readable: same row groups, same shards, same sorted, deduplicated gated lines.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmsynth import constants
from lmsynth.records import RUN_RECORDS_DIR, RUN_UNSAFE_DIR, GatedInstruction, SynthRecord
from lmsynth.release import data_files
from lmsynth.release.build import build_release
from lmsynth.release.release_yaml import load_manifest
from lmsynth.testing import write_run_dir
from lmsynth.tree import layout
from tests.release.conftest import Project


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _public_digests(tree: Path) -> dict[str, str]:
    """The digest of every public file; MANIFEST.json without the ciphertexts' digests and the salted key check."""
    out = {}
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = path.relative_to(tree).as_posix()
        if layout.is_encrypted(rel):
            continue
        if rel == layout.MANIFEST_FILE:
            m = json.loads(path.read_text(encoding="utf-8"))
            m.pop("source_fingerprint")
            for f, e in m["files"].items():
                if layout.is_encrypted(f):
                    e.pop("sha256"), e.pop("size")
            out[rel] = _sha(json.dumps(m, sort_keys=True).encode())
        else:
            out[rel] = _sha(path.read_bytes())
    return out


# Input quirks the reader must keep: a file without its last newline, blank lines, CRLF line ends.
def _quirky(run: Path) -> None:
    shards = sorted((run / RUN_RECORDS_DIR).glob("*.jsonl"))
    a = shards[0].read_bytes().split(b"\n")
    a.insert(3, b"")
    a.insert(9, b"   ")
    shards[0].write_bytes(b"\n".join(a))
    b = shards[1].read_bytes()
    shards[1].write_bytes(b.rstrip(b"\n").replace(b"\n", b"\r\n", 2))


def _subset_run(tmp_path: Path) -> Path:
    run = write_run_dir(tmp_path / "run", 230, shape="v0.5", seed=11, unsafe_n=9, records_per_shard=70)
    _quirky(run)
    return run


def _spec(config: str = "gemma-3"):  # noqa: ANN202
    return load_manifest(constants.RELEASE_DIR / "v0.5.yaml").subset(config)


def _write(run: Path, tmp_path: Path, **kw: int) -> tuple[data_files.SubsetOutput, Path]:
    tree = tmp_path / "tree"
    return data_files.write_subset(_spec(), records=run, tree=tree, **kw), tree


def _gated(rec: SynthRecord) -> str:
    g = GatedInstruction(conversation_id=rec.conversation_id, translated_conversation=rec.translated_conversation)
    return g.model_dump_json()


def _reference_subset(run: Path, *, rows_per_group: int, shard_bytes: int) -> tuple[list[pa.Table], dict]:
    """The row groups and gated lines a subset must get, line by line (the rules, not the fast path)."""
    spec = _spec()
    cols = data_files.public_columns(spec)
    groups: list[list[dict]] = [[]]
    group_bytes = max(1, min(data_files.GROUP_BYTES, shard_bytes // 4))
    size = 0
    gated: list[tuple[str, str]] = []
    for f in sorted((run / RUN_RECORDS_DIR).glob("*.jsonl")):
        for line in io.BytesIO(f.read_bytes()):
            if not line.strip():
                continue
            rec = SynthRecord.model_validate_json(line)
            groups[-1].append({k: v for k, v in rec.model_dump(mode="json").items() if k in cols})
            gated.append((rec.conversation_id, _gated(rec)))
            size += len(line)
            if len(groups[-1]) >= rows_per_group or size >= group_bytes:
                groups.append([])
                size = 0
    unsafe = []
    for line in (run / RUN_UNSAFE_DIR / "records-00000.jsonl").read_bytes().splitlines():
        rec = SynthRecord.model_validate_json(line)
        unsafe.append((rec.conversation_id, _gated(rec)))
    schema = data_files.arrow_schema(spec)
    tables = [pa.Table.from_pylist(g, schema=schema) for g in groups if g]

    def dedupe(pairs: list[tuple[str, str]]) -> list[str]:
        seen, out = set(), []
        for key, line in sorted(pairs):
            if key not in seen:
                seen.add(key)
                out.append(line)
        return out

    return tables, {"default": dedupe(gated), "unsafe": dedupe(gated + unsafe)}


# Recorded from the line-by-line builder (see the module docstring).
GOLDEN_SUBSET = {
    "5/400000": {
        "data/gemma-3/train-00000-of-00001.parquet": "5379cd67ecd5612fd23855c6cf1cfa50",
        "gated:default": "27a7c0a16273fcbbe157b017c7af8560",
        "gated:unsafe": "532c092218dfbb16ae7c98c889f0a3c6",
        "gz:default": "4484591cddf5678281bf92dd949e7350",
        "counts": "96327ebd3b4f34f887e804b55841b025",
        "hist": "69f54408e8056093843f098c2db2a22d",
    },
    "7/30000": {
        "data/gemma-3/train-00000-of-00015.parquet": "224eb58925a1193ea0923217eea0f8eb",
        "data/gemma-3/train-00001-of-00015.parquet": "829a5f0f57ceb51cb10ea7bd469ab5a3",
        "data/gemma-3/train-00002-of-00015.parquet": "36bd9e7ca36272688c242a3e090c022f",
        "data/gemma-3/train-00003-of-00015.parquet": "f70a512ca57d28436d84c76709e4b874",
        "data/gemma-3/train-00004-of-00015.parquet": "e15703ea4d358af15ad00eb250f5a08e",
        "data/gemma-3/train-00005-of-00015.parquet": "4c382bc5217cadd474fd507ab7925458",
        "data/gemma-3/train-00006-of-00015.parquet": "286013d0228072c5f3b38f9bddead457",
        "data/gemma-3/train-00007-of-00015.parquet": "0bf7664fce4b7b3e6f133d0f5e2fa8d5",
        "data/gemma-3/train-00008-of-00015.parquet": "2d1a3c32ce49f472fce4bdaf8aba89c7",
        "data/gemma-3/train-00009-of-00015.parquet": "567e14e24c1bccfe615bb884d45830ba",
        "data/gemma-3/train-00010-of-00015.parquet": "0ef3279a6fdcabba177c9c9de4c513e8",
        "data/gemma-3/train-00011-of-00015.parquet": "90df578abda2a92fbd10377a70d6d1a2",
        "data/gemma-3/train-00012-of-00015.parquet": "5436d7f7a3b516e3ef0935ab0b636675",
        "data/gemma-3/train-00013-of-00015.parquet": "30d00013b422b7c4ffda2b99ea7e37f6",
        "data/gemma-3/train-00014-of-00015.parquet": "892151e6463b44f2bb39c853f672a6ca",
        "gated:default": "27a7c0a16273fcbbe157b017c7af8560",
        "gated:unsafe": "532c092218dfbb16ae7c98c889f0a3c6",
        "gz:default": "4484591cddf5678281bf92dd949e7350",
        "counts": "96327ebd3b4f34f887e804b55841b025",
        "hist": "58193012121003f96acd4ee49ce2b02c",
    },
    "1000/536870912": {
        "data/gemma-3/train-00000-of-00001.parquet": "7efd34f4f209b4f1cf98b5164ede8e05",
        "gated:default": "27a7c0a16273fcbbe157b017c7af8560",
        "gated:unsafe": "532c092218dfbb16ae7c98c889f0a3c6",
        "gz:default": "4484591cddf5678281bf92dd949e7350",
        "counts": "96327ebd3b4f34f887e804b55841b025",
        "hist": "c9b03d19b19c5dc89339f570efc26c6c",
    },
}
# The cards (and MANIFEST.json, which lists them) were re-pinned once, when the recovery section gained the
# sentence on private files; every data file keeps the digest of the line-by-line build.
GOLDEN_RELEASE = {
    "MANIFEST.json": "8db233163e5183c02923be154309c89b",
    "README.md": "43942f1b754d75714cf87d652c318bca",
    "README_gemma-2.md": "ebb3fc5768bcaa40dc28b7242f1037cf",
    "README_gemma-3.md": "07930c06394513ffc4f87bd97e88f679",
    "README_llama-3.1.md": "06412ba39986c3ec13fff157ff3f5130",
    "data/gemma-2/train-00000-of-00005.parquet": "1223cfbb84c98dbf3723d24c9c099bb5",
    "data/gemma-2/train-00001-of-00005.parquet": "f7166fb671a1b717c1cf4404e7853d8d",
    "data/gemma-2/train-00002-of-00005.parquet": "3cd436f05357ceb9e33eb46489dbb50a",
    "data/gemma-2/train-00003-of-00005.parquet": "1fb41924109adfe9087eae61cdf0aa21",
    "data/gemma-2/train-00004-of-00005.parquet": "4ce4bd96b78ea564d7c909d7080a5657",
    "data/gemma-3/train-00000-of-00003.parquet": "c66239565ff524cf2c0b14773f735dfe",
    "data/gemma-3/train-00001-of-00003.parquet": "ea9ecdd672403414049d0c678962fbf7",
    "data/gemma-3/train-00002-of-00003.parquet": "d58596a01f478097d1e2d1ff60e2b98e",
    "data/llama-3.1/train-00000-of-00003.parquet": "42b3a4382e1a60fcaf53b5e406de1121",
    "data/llama-3.1/train-00001-of-00003.parquet": "952da7d96c47c54f0a2a8054a7cae4a4",
    "data/llama-3.1/train-00002-of-00003.parquet": "675c2490144f25381e4dca2d035d5940",
    "figures/gemma-2/preference-score-distribution.png": "ab971da1fc2230c38cdd402d4be17856",
    "figures/gemma-2/response-length-distribution.png": "26dd9ccb3933ad59d50bb3156e3ea660",
    "figures/gemma-3/preference-score-distribution.png": "77d7e3608813a76da1435d59c97c7ac1",
    "figures/gemma-3/response-length-distribution.png": "9c166260c73c431fa679fb326847b1b2",
    "figures/llama-3.1/preference-score-distribution.png": "4a83969c3a0e82c4ef719cb69ff7a9fe",
    "figures/llama-3.1/response-length-distribution.png": "42cb0abb4895e4281c79cb5df1f9406d",
    "pipelines/gemma-2.yaml": "ceba11a9adecdbd690ab8f5901baceb7",
    "pipelines/gemma-3.yaml": "10961756188df821fa470353980f2773",
    "pipelines/llama-3.1.yaml": "f6be74867bfad90a4aeb6648b3cdf81d",
}


@pytest.mark.parametrize(
    ("rows_per_group", "shard_bytes"), [(5, 400_000), (7, 30_000), (1_000, data_files.SHARD_BYTES)]
)
def test_subset_bytes_match_the_reference_and_the_pins(tmp_path: Path, rows_per_group: int, shard_bytes: int) -> None:
    run = _subset_run(tmp_path)
    out, tree = _write(run, tmp_path, rows_per_group=rows_per_group, shard_bytes=shard_bytes)
    tables, gated = _reference_subset(run, rows_per_group=rows_per_group, shard_bytes=shard_bytes)
    files = [pq.ParquetFile(tree / s) for s in out.shards]
    groups = [f.read_row_group(i) for f in files for i in range(f.num_row_groups)]
    assert [g.num_rows for g in groups] == [t.num_rows for t in tables]
    assert all(g.equals(t) for g, t in zip(groups, tables, strict=True))
    lines = {which: list(fn()) for which, fn in out.gated.items()}
    assert lines == gated
    assert (out.counts.gated_default, out.counts.gated_unsafe) == (len(gated["default"]), len(gated["unsafe"]))
    digests = {s: _sha((tree / s).read_bytes()) for s in out.shards}
    digests |= {f"gated:{w}": _sha("".join(x + "\n" for x in v).encode()) for w, v in lines.items()}
    digests["gz:default"] = _sha(b"".join(data_files.gz_bytes(out.gated["default"].chunks())))
    digests["counts"] = _sha(out.counts.model_dump_json().encode())
    digests["hist"] = _sha(json.dumps([out.score_hist, out.length_hist, out.failed_scores, out.arrow_bytes]).encode())
    assert digests == GOLDEN_SUBSET[f"{rows_per_group}/{shard_bytes}"]


def test_an_id_both_answered_and_flagged_keeps_the_smaller_line(tmp_path: Path) -> None:
    """+unsafe holds one line per id: where records/ and unsafe/ share an id, the line a sorted merge keeps."""
    run = _subset_run(tmp_path)
    shard = sorted((run / RUN_RECORDS_DIR).glob("*.jsonl"))[2]
    recs = [json.loads(x) for x in shard.read_text(encoding="utf-8").splitlines()[:3]]
    flagged = [
        {**recs[0], "translated_conversation": [{"role": "user", "content": 'あ\t"z\u0001'}]},
        {**recs[1], "translated_conversation": [{"role": "user", "content": "\u3000前"}]},
        recs[2],
    ]
    with open(run / RUN_UNSAFE_DIR / "records-00000.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in flagged)
    out, _ = _write(run, tmp_path)
    _, gated = _reference_subset(run, rows_per_group=data_files.ROWS_PER_GROUP, shard_bytes=data_files.SHARD_BYTES)
    assert list(out.gated["unsafe"]()) == gated["unsafe"]
    assert list(out.gated["default"]()) == gated["default"]


def test_release_public_bytes_are_pinned(project: Project, tmp_path: Path) -> None:
    """All three v0.5 subsets (one multiturn), shards rotated: every public file as before, byte for byte."""
    res = build_release(
        "v0.5",
        manifest_path=project.manifest,
        target="hub",
        dry_run=True,
        out_dir=tmp_path / "out",
        passphrase=project.passphrase,
        shard_bytes=40_000,
    )
    digests = _public_digests(res.out_dir)
    assert len([r for r in digests if r.endswith(".parquet")]) > 6
    assert digests == GOLDEN_RELEASE
