"""The release's bytes are pinned: a faster builder must write exactly what the line-by-line one wrote.

`GOLDEN_*` are the sha256 of every public file (and of the gated plaintexts) as the builder wrote them for
these deterministic inputs before its reading, validation and sorting were vectorised; recorded with the
project's pinned pyarrow (`uv.lock`). Beside the pins, `_reference_subset` is a plain line-by-line
implementation (pydantic per line, `Table.from_pylist`, an in-memory sort) kept here so that the rules the
bytes follow stay readable: same row groups, same shards, same sorted, deduplicated gated lines.
"""

from __future__ import annotations

import io
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmsynth import constants
from lmsynth.records import RUN_RECORDS_DIR, RUN_UNSAFE_DIR, GatedInstruction, SynthRecord
from lmsynth.release import data_files
from lmsynth.release.build import build_release
from lmsynth.release.manifest import load_manifest
from lmsynth.testing import write_run_dir
from lmsynth.tree import layout
from tests.release.conftest import Project


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _public_digests(tree: Path) -> dict[str, str]:
    """sha256 of every public file; MANIFEST.json without the ciphertexts' digests and the salted key check."""
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
    tree, work = tmp_path / "tree", tmp_path / "work"
    work.mkdir()
    return data_files.write_subset(_spec(), records=run, tree=tree, work=work, **kw), tree


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
        "data/gemma-3/train-00000-of-00001.parquet": "5379cd67ecd5612fd23855c6cf1cfa5058d0b4169353905f5f9be235109850fd",
        "gated:default": "27a7c0a16273fcbbe157b017c7af8560e842a7b39c30045b58bf6410a793ad3c",
        "gated:unsafe": "532c092218dfbb16ae7c98c889f0a3c6b17715186abb2751d94c7860211bbcbc",
        "gz:default": "4484591cddf5678281bf92dd949e73505e8f6a626c220d009495b18bf97f3ce2",
        "counts": "96327ebd3b4f34f887e804b55841b025e6ff0f3ce4314a46269ccf9494d80947",
        "hist": "69f54408e8056093843f098c2db2a22d0d7115ea2f3e2089d4b4f4ee07071d15",
    },
    "7/30000": {
        "data/gemma-3/train-00000-of-00015.parquet": "224eb58925a1193ea0923217eea0f8eba227256ad55ed2a887c9f34a41ceecac",
        "data/gemma-3/train-00001-of-00015.parquet": "829a5f0f57ceb51cb10ea7bd469ab5a3d1f4b22952396c5f71c7103d8ceca723",
        "data/gemma-3/train-00002-of-00015.parquet": "36bd9e7ca36272688c242a3e090c022f79479c7c78f89868dbddf52b546aa018",
        "data/gemma-3/train-00003-of-00015.parquet": "f70a512ca57d28436d84c76709e4b874aa52f95dea4e10b7e4d02484afa5b720",
        "data/gemma-3/train-00004-of-00015.parquet": "e15703ea4d358af15ad00eb250f5a08e016172c60fbd6ef47130c8d59af68299",
        "data/gemma-3/train-00005-of-00015.parquet": "4c382bc5217cadd474fd507ab79254585759a8753703c4ad32f50b549d7ce0a2",
        "data/gemma-3/train-00006-of-00015.parquet": "286013d0228072c5f3b38f9bddead457b58f031ba0c5f025383fa93ef0038369",
        "data/gemma-3/train-00007-of-00015.parquet": "0bf7664fce4b7b3e6f133d0f5e2fa8d51ff9e3f2f7ec64da233d8dd9e3f4ab50",
        "data/gemma-3/train-00008-of-00015.parquet": "2d1a3c32ce49f472fce4bdaf8aba89c75d4b4ce73668ec82d79fcf182ef8c48b",
        "data/gemma-3/train-00009-of-00015.parquet": "567e14e24c1bccfe615bb884d45830ba2e8b3ade098da133e27960ebf4f06109",
        "data/gemma-3/train-00010-of-00015.parquet": "0ef3279a6fdcabba177c9c9de4c513e8001589569bacaff745d0b3f1fb70ec04",
        "data/gemma-3/train-00011-of-00015.parquet": "90df578abda2a92fbd10377a70d6d1a2ffa7f36b41d3b5c8591594a0fcfb3d52",
        "data/gemma-3/train-00012-of-00015.parquet": "5436d7f7a3b516e3ef0935ab0b636675896295b4a53e38a372e09d43fd341fa2",
        "data/gemma-3/train-00013-of-00015.parquet": "30d00013b422b7c4ffda2b99ea7e37f6d2b87b69c0d13fc2b97b9744d6117bda",
        "data/gemma-3/train-00014-of-00015.parquet": "892151e6463b44f2bb39c853f672a6ca4dbe03931180e9b303d7ffdabe4b160f",
        "gated:default": "27a7c0a16273fcbbe157b017c7af8560e842a7b39c30045b58bf6410a793ad3c",
        "gated:unsafe": "532c092218dfbb16ae7c98c889f0a3c6b17715186abb2751d94c7860211bbcbc",
        "gz:default": "4484591cddf5678281bf92dd949e73505e8f6a626c220d009495b18bf97f3ce2",
        "counts": "96327ebd3b4f34f887e804b55841b025e6ff0f3ce4314a46269ccf9494d80947",
        "hist": "58193012121003f96acd4ee49ce2b02c36e489bc21be819d27e709c2ee9e70fc",
    },
    "1000/536870912": {
        "data/gemma-3/train-00000-of-00001.parquet": "7efd34f4f209b4f1cf98b5164ede8e053783f6e90184a0741001909654d0dc85",
        "gated:default": "27a7c0a16273fcbbe157b017c7af8560e842a7b39c30045b58bf6410a793ad3c",
        "gated:unsafe": "532c092218dfbb16ae7c98c889f0a3c6b17715186abb2751d94c7860211bbcbc",
        "gz:default": "4484591cddf5678281bf92dd949e73505e8f6a626c220d009495b18bf97f3ce2",
        "counts": "96327ebd3b4f34f887e804b55841b025e6ff0f3ce4314a46269ccf9494d80947",
        "hist": "c9b03d19b19c5dc89339f570efc26c6c26a46c1ab6f0053f6daf2c33961ba67f",
    },
}
GOLDEN_RELEASE = {
    "MANIFEST.json": "c1c1c0c4dce59d5c46f8ad4430aaaa718048f452c496b6ffc6e14e3bfe63d8d3",
    "README.md": "530408a19667768ce0171c2616c36f4c69a5a4d1a7a29a43b59d7f3f6f56c72b",
    "README_gemma-2.md": "4485dcd7f3797d5c7dbdcc101d6ada922c8130c60e1608d0fc77eb338e7f3af1",
    "README_gemma-3.md": "1f01907c3dd465ebc63d4e9a3c74d9ab27f328cb3ee580fdc4634730e4dfd25d",
    "README_llama-3.1.md": "53148b6e2fd9826f3abfbd1f00090183092601aa84784c63e3fa7187021d8b4d",
    "data/gemma-2/train-00000-of-00005.parquet": "1223cfbb84c98dbf3723d24c9c099bb51947e988c7e258cd3b3d827ab2b21a4d",
    "data/gemma-2/train-00001-of-00005.parquet": "f7166fb671a1b717c1cf4404e7853d8d94a7343694bb4b5c205ace800a2d695d",
    "data/gemma-2/train-00002-of-00005.parquet": "3cd436f05357ceb9e33eb46489dbb50abc38cae40d4ec5394b7e7a36b0c7e58d",
    "data/gemma-2/train-00003-of-00005.parquet": "1fb41924109adfe9087eae61cdf0aa219ddd468bc97b544c97f104f1705d25c2",
    "data/gemma-2/train-00004-of-00005.parquet": "4ce4bd96b78ea564d7c909d7080a565754b996e218aae7d99edcec58b9a0f8cb",
    "data/gemma-3/train-00000-of-00003.parquet": "c66239565ff524cf2c0b14773f735dfe50e0cc007127156bb4855eef8aecf152",
    "data/gemma-3/train-00001-of-00003.parquet": "ea9ecdd672403414049d0c678962fbf74d60b688060fcb3b4bf25b2847ec2a0b",
    "data/gemma-3/train-00002-of-00003.parquet": "d58596a01f478097d1e2d1ff60e2b98ee592a39bb6c5d21216c0a2d3e230d23d",
    "data/llama-3.1/train-00000-of-00003.parquet": "42b3a4382e1a60fcaf53b5e406de11213ca4324afeea9c22c446ab1e88930d21",
    "data/llama-3.1/train-00001-of-00003.parquet": "952da7d96c47c54f0a2a8054a7cae4a47f435bb5c1aa82fff1878e3378f123d5",
    "data/llama-3.1/train-00002-of-00003.parquet": "675c2490144f25381e4dca2d035d5940239dbe477dd73be6868e4fcb96a10395",
    "figures/gemma-2/preference-score-distribution.png": "ab971da1fc2230c38cdd402d4be17856e4b9ab9795e4e37820d655e18014886e",
    "figures/gemma-2/response-length-distribution.png": "26dd9ccb3933ad59d50bb3156e3ea6601fa3822783bb755728d1f3bf47b9c43b",
    "figures/gemma-3/preference-score-distribution.png": "77d7e3608813a76da1435d59c97c7ac1f0ace8f58323e02df0bc2b76f9b37ae8",
    "figures/gemma-3/response-length-distribution.png": "9c166260c73c431fa679fb326847b1b29ae6aa19aa52e409951ddbee73bc6398",
    "figures/llama-3.1/preference-score-distribution.png": "4a83969c3a0e82c4ef719cb69ff7a9fe1fdf284bb509ecdeeeb68e4a97e810fe",
    "figures/llama-3.1/response-length-distribution.png": "42cb0abb4895e4281c79cb5df1f9406d52899d3fd3a6495f123dc2ee759e26e6",
    "pipelines/gemma-2.yaml": "ceba11a9adecdbd690ab8f5901baceb749a143a3105e9d57f658a2a9170b12a2",
    "pipelines/gemma-3.yaml": "10961756188df821fa470353980f2773586c6fecc0a40dfd890913098f18066d",
    "pipelines/llama-3.1.yaml": "f6be74867bfad90a4aeb6648b3cdf81d26d582f6b7accd220caaa10a81d155ad",
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
    digests["gz:default"] = _sha(b"".join(data_files.gz_chunks(iter(lines["default"]))))
    digests["counts"] = _sha(out.counts.model_dump_json().encode())
    digests["hist"] = _sha(json.dumps([out.score_hist, out.length_hist, out.failed_scores, out.arrow_bytes]).encode())
    assert digests == GOLDEN_SUBSET[f"{rows_per_group}/{shard_bytes}"]


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
