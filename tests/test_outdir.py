"""`--out` never replaces an input, the target, the cache, the current folder or a folder lmsynth did not write.

Every case runs the real command line (`lmsynth.cli.main`, its exit code and its stderr) in a folder laid out as
a user's: the bundled sample as a source folder, a prepared folder, a run folder, a release manifest, a local hub
holding the release, a recovered folder, an export and a dry run's tree. A refusal is one line naming both paths,
exit 1, and leaves every byte of that folder as it was (hashed before and after).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from lmsynth import constants
from lmsynth.cli import main
from lmsynth.outdir import MARKER_FILE, OutMarker, kind_of


KEY = "outdir-test-passphrase-12345"
SRC = "data/src"  # a source folder holding the bundled sample
MANIFEST = "v0.5.yaml"

# One command per verb that writes an output folder; `{out}` is the folder under test.
VERBS = {
    "prepare": ["prepare", "--source", SRC, "--out", "{out}"],
    "run": ["run", "pipes/fake.yaml", "--input", "runs/prepared", "--out", "{out}"],
    "gather": ["gather", "runs/gemma-3", "runs/prepared", "--out", "{out}"],
    "release": ["release", "v0.5", "--manifest", MANIFEST, "--to", "hub", "--dry-run", "--out", "{out}"],
    "recover": ["recover", "--from", "hub", "--source", SRC, "--out", "{out}"],
    "export sft": ["export", "sft", "--input", "mine/rec", "--out", "{out}"],
    "export dpo": ["export", "dpo", "--input", "mine/rec", "--out", "{out}"],
}

# (verb, --out, the other path the one line must name). Each is refused before any work.
REFUSED = [
    # --out is an input
    ("prepare", SRC, SRC),
    ("prepare", f"{SRC}/", SRC),
    ("run", "runs/prepared", "runs/prepared"),
    ("run", "pipes/fake.yaml", "pipes/fake.yaml"),
    ("gather", "runs/gemma-3", "runs/gemma-3"),
    ("release", "runs/gemma-3", "runs/gemma-3"),
    ("release", MANIFEST, MANIFEST),
    ("recover", SRC, SRC),
    ("export sft", "mine/rec", "mine/rec"),
    ("export dpo", "./mine/rec/", "mine/rec"),
    # --out contains an input
    ("prepare", "data", SRC),
    ("run", "runs", "runs/prepared"),
    ("gather", "runs", "runs/gemma-3"),
    ("release", "runs", "runs/gemma-3"),
    ("recover", "data", SRC),
    ("export sft", "mine", "mine/rec"),
    # --out is inside an input
    ("prepare", f"{SRC}/p", SRC),
    ("run", "runs/prepared/x", "runs/prepared"),
    ("gather", "runs/gemma-3/records", "runs/gemma-3"),
    ("release", "runs/gemma-3/records", "runs/gemma-3"),
    ("export sft", "mine/rec/sft", "mine/rec"),
    # --out is the target (the local hub folder), or inside it
    ("release", "hub", "hub"),
    ("release", "hub/data", "hub"),
    ("recover", "hub", "hub"),
    ("recover", "hub/", "hub"),
    # the current folder or one above it
    *((verb, out, "{cwd}") for verb in VERBS for out in (".", "..", "./", "runs/..")),
    # the cache
    ("prepare", "{cache}", "{cache}"),
    ("export sft", "{cache}/x", "{cache}"),
    ("run", "{cache}/..", "{cache}"),
    # other spellings: absolute, trailing slash, `..` inside
    ("run", "{cwd}/runs/prepared", "runs/prepared"),
    ("recover", "{cwd}/hub/", "hub"),
    ("export sft", "{cwd}/mine", "mine/rec"),
    ("release", "runs/gemma-3/../gemma-3", "runs/gemma-3"),
    ("prepare", "{cwd}/..", "{cwd}"),
    # a folder lmsynth did not write, a file
    *((verb, "notes", "notes") for verb in VERBS),
    ("prepare", "notes/todo.txt", "notes/todo.txt"),
    ("release", "hub2", "hub2"),  # another local hub: a git repository, not a release tree
    # symlinks: followed, then the same rules
    ("run", "link-to-prepared", "runs/prepared"),
    ("export sft", "link-to-rec", "mine/rec"),
    ("release", "link-to-hub", "hub"),
    # a folder lmsynth wrote for another verb
    ("prepare", "mine/rec", "mine/rec"),
    ("run", "mine/rec", "mine/rec"),
    ("recover", "build/v0.5", "build/v0.5"),
    ("release", "sft", "sft"),
    ("export dpo", "build/v0.5", "build/v0.5"),
    ("export sft", "runs/prepared2", "runs/prepared2"),
    ("gather", "sft", "sft"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A user's folder with one finished output of every verb (built once through the library verbs)."""
    from lmsynth.export.sft_dpo import export_dpo, export_sft
    from lmsynth.prepare import prepare
    from lmsynth.recover import recover
    from lmsynth.release.build import build_release
    from lmsynth.testing import write_run_dir
    from tests.pipeline.factories import write_fake_pipeline

    root = tmp_path_factory.mktemp("world")
    key = SecretStr(KEY)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(constants, "CACHE_DIR", root.parent / f"{root.name}-cache")
        Path(SRC).mkdir(parents=True)
        shutil.copyfile(constants.SAMPLE_SOURCE, Path(SRC) / "sample.jsonl")
        prepare(SRC, out_dir="runs/prepared")
        prepare(SRC, out_dir="runs/prepared2")
        write_run_dir("runs/gemma-3", 12, seed=7, unsafe_n=2, prepared="runs/synth-prepared")
        data = yaml.safe_load((constants.RELEASE_DIR / "v0.5.yaml").read_text(encoding="utf-8"))
        data["subsets"] = [s for s in data["subsets"] if s["config"] == "gemma-3"]
        data["subsets"][0].update(records="runs/gemma-3", prepared="runs/synth-prepared", pipelines=[])
        Path(MANIFEST).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        build_release("v0.5", manifest_path=MANIFEST, target="hub", passphrase=key)
        build_release("v0.5", manifest_path=MANIFEST, target="hub2", passphrase=key)
        build_release("v0.5", manifest_path=MANIFEST, target="hub", dry_run=True, out_dir="build/v0.5", passphrase=key)
        recover("hub", revision="v0.5", source=SRC, out_dir="mine/rec", passphrase=key)
        export_sft("mine/rec", out_dir="sft")
        export_dpo("mine/rec", out_dir="dpo")
        Path("pipes").mkdir()
        write_fake_pipeline(Path("pipes"))
        Path("notes").mkdir()
        Path("notes/todo.txt").write_text("mine\n")
        for name, to in (("link-to-prepared", "runs/prepared"), ("link-to-rec", "mine/rec"), ("link-to-hub", "hub")):
            os.symlink(to, name)
    yield root


@pytest.fixture
def cwd(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the world as the current folder, the passphrase in the environment."""
    here = tmp_path / "here"
    shutil.copytree(world, here, symlinks=True)
    monkeypatch.chdir(here)
    monkeypatch.setenv("LMSYNTH_PASSPHRASE", KEY)
    return here


def cli(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run `lmsynth ARGS` in this process through the console entry point; (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lmsynth", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main()
    return int(done.value.code or 0), capsys.readouterr().err


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (links as links, folders too) → a digest of what it is."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def args_for(verb: str, out: str) -> list[str]:
    return [a.replace("{out}", out) for a in VERBS[verb]]


@pytest.mark.parametrize(("verb", "out", "other"), REFUSED, ids=[f"{v}--out={o}" for v, o, _ in REFUSED])
def test_refused_before_any_work_in_one_line(
    verb: str, out: str, other: str, cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = str(constants.CACHE_DIR)
    out, other = (
        out.replace("{cache}", cache).replace("{cwd}", str(cwd)),
        other.replace("{cache}", cache).replace("{cwd}", str(cwd)),
    )
    Path(cache).mkdir(parents=True, exist_ok=True)
    before = tree_digest(cwd), tree_digest(Path(cache))
    code, err = cli(args_for(verb, out), capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("(set LMSYNTH_DEBUG")]
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("Error: output folder "), err
    assert str(Path(out)) in lines[0], err
    assert other.rstrip("/") in lines[0], err
    assert (tree_digest(cwd), tree_digest(Path(cache))) == before  # inputs, hub and outputs byte for byte


@pytest.mark.parametrize(
    ("verb", "out"),
    [
        ("prepare", "runs/prepared2"),
        ("release", "build/v0.5"),
        ("recover", "mine/rec"),
        ("export sft", "sft"),
        ("export dpo", "sft"),  # an export replaces an export of the other config
        ("export dpo", "fresh/new/folder"),
        ("prepare", "empty"),
    ],
)
def test_rerun_into_its_own_output_replaces_it(
    verb: str, out: str, cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (cwd / "empty").mkdir()
    inputs = {p: tree_digest(cwd / p) for p in (SRC, "runs/prepared", "runs/gemma-3", "hub", "mine/rec")}
    code, err = cli(args_for(verb, out), capsys, monkeypatch)
    assert code == 0, err
    assert {p: tree_digest(cwd / p) for p in inputs} == inputs
    assert kind_of(cwd / out) is not None
    assert not [p.name for p in (cwd / out).parent.iterdir() if p.name.endswith((".tmp", ".old"))]


def test_outputs_carry_their_marker(cwd: Path) -> None:
    for folder, kind in (("runs/prepared", "prepared"), ("mine/rec", "recovered")):
        marker = OutMarker.model_validate_json((cwd / folder / MARKER_FILE).read_bytes())
        assert marker.kind == kind
    # Trees publish exactly what MANIFEST.json lists: their manifest is their marker, nothing is added.
    for folder, kind in (("build/v0.5", "release tree"), ("sft", "export")):
        assert not (cwd / folder / MARKER_FILE).exists()
        assert kind_of(cwd / folder) == kind


def test_folders_of_earlier_versions_are_recognised_by_their_layout(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (cwd / "runs/prepared2" / MARKER_FILE).unlink()
    (cwd / "mine/rec" / MARKER_FILE).unlink()
    assert kind_of(cwd / "runs/prepared2") == "prepared"
    assert kind_of(cwd / "mine/rec") == "recovered"
    assert kind_of(cwd / "runs/gemma-3") == "run"  # written by `write_run_dir`, without a marker
    assert cli(args_for("prepare", "runs/prepared2"), capsys, monkeypatch)[0] == 0
    # A user's file beside an earlier version's outputs: not lmsynth's folder any more.
    (cwd / "mine/rec" / "notes.txt").write_text("mine")
    (cwd / "runs/gemma-3" / "notes.txt").write_text("mine")
    assert kind_of(cwd / "runs/gemma-3") is None
    code, err = cli(args_for("run", "runs/gemma-3"), capsys, monkeypatch)
    assert code == 1 and "lmsynth did not write it" in err


def test_a_symlinked_out_stays_a_link(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink("build/v0.5", "link-to-build")
    code, err = cli(args_for("release", "link-to-build"), capsys, monkeypatch)
    assert code == 0, err
    assert os.readlink("link-to-build") == "build/v0.5"
    assert kind_of(cwd / "build/v0.5") == "release tree"
    os.symlink("new/export", "dangling")
    assert cli(args_for("export sft", "dangling"), capsys, monkeypatch)[0] == 0
    assert os.readlink("dangling") == "new/export" and kind_of(cwd / "new/export") == "export"


def test_a_run_reruns_into_its_folder_through_a_link(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink("runs/gemma-3", "link-to-run")  # a run folder an earlier version wrote (no marker)
    code, err = cli(args_for("run", "link-to-run"), capsys, monkeypatch)
    assert code == 0, err
    assert os.path.islink("link-to-run") and kind_of(cwd / "runs/gemma-3") == "run"
    assert (cwd / "runs/gemma-3" / MARKER_FILE).is_file() and (cwd / "runs/gemma-3/run.json").is_file()


def test_demo_refuses_a_folder_it_did_not_write(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.rmtree(cwd / "runs/prepared")
    (cwd / "runs/prepared").mkdir()
    (cwd / "runs/prepared/mine.txt").write_text("mine")
    before = tree_digest(cwd)
    code, err = cli(["demo", "--hub", "hub3"], capsys, monkeypatch)
    assert code == 1 and "output folder runs/prepared is not empty" in err
    assert tree_digest(cwd) == before


def test_out_a_symlink_loop_is_one_line(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink("loop", "loop")
    code, err = cli(args_for("prepare", "loop"), capsys, monkeypatch)
    assert code == 1 and err.splitlines()[0] == "Error: Too many levels of symbolic links: loop"


# OS errors: one line `<reason>: <path>`, exit 1, nothing half-written. Root ignores file modes, so the command
# runs in a child without the capabilities that override them.
UNPRIVILEGED = (
    ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    if os.geteuid() == 0
    else []
)


def child(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LMSYNTH_CACHE": str(constants.CACHE_DIR), "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(
        [*UNPRIVILEGED, sys.executable, "-m", "lmsynth", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["prepare", "--source", SRC, "--out", "ro/out"], "Error: Permission denied: {cwd}/ro"),
        (["prepare", "--source", SRC, "--out", "ro/a/b"], "Error: Permission denied: {cwd}/ro/a"),
        (args_for("export sft", "ro/sft"), "Error: Permission denied: {cwd}/ro"),
        (args_for("recover", "ro/rec"), "Error: Permission denied: {cwd}/ro"),
        (["prepare", "--source", "data/locked.jsonl", "--out", "p"], "Error: Permission denied: data/locked.jsonl"),
        (args_for("run", "ro/run"), "Error: Permission denied: {cwd}/ro/"),
        (
            ["run", "pipes/fake.yaml", "--input", "locked-prepared", "--out", "r"],
            "Error: Permission denied: locked-prepared/instructions.jsonl",
        ),
        (
            ["release", "v0.5", "--manifest", MANIFEST, "--dry-run", "--records", "gemma-3=locked-run", "--out", "t"],
            "Error: Permission denied: locked-run/run.json",
        ),
    ],
)
def test_os_errors_are_one_line(args: list[str], line: str, cwd: Path) -> None:
    (cwd / "ro").mkdir(mode=0o555)
    shutil.copyfile(cwd / SRC / "sample.jsonl", cwd / "data/locked.jsonl")
    (cwd / "data/locked.jsonl").chmod(0)
    shutil.copytree(cwd / "runs/gemma-3", cwd / "locked-run")
    (cwd / "locked-run/run.json").chmod(0)
    shutil.copytree(cwd / "runs/prepared", cwd / "locked-prepared")
    (cwd / "locked-prepared/instructions.jsonl").chmod(0)
    before = tree_digest(cwd)
    res = child(args, cwd)
    assert res.returncode == 1, res.stderr
    assert res.stderr.splitlines()[0].startswith(line.replace("{cwd}", str(cwd))), res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 2
    assert tree_digest(cwd) == before  # nothing half-written


@pytest.mark.parametrize("hub", [".", "runs", "runs/prepared", "runs/demo/x"])
def test_demo_refuses_a_hub_over_its_own_folders_before_any_work(
    hub: str, cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree_digest(cwd)
    code, err = cli(["demo", "--hub", hub], capsys, monkeypatch)
    assert code == 1 and err.startswith("Error: output folder runs/"), err
    assert f"{Path(hub)}, the target" in err.splitlines()[0]
    assert tree_digest(cwd) == before


def test_the_bundled_sample_and_rules_are_inputs_too(
    cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = constants.SAMPLE_SOURCE
    before = tree_digest(sample.parent)
    for out in (sample.parent, sample, sample.parent.parent):
        code, err = cli(["prepare", "--out", str(out)], capsys, monkeypatch)
        assert code == 1 and f"output folder {out} " in err and str(sample) in err, err
    code, err = cli(["prepare", "--source", SRC, "--rules", "notes/todo.txt", "--out", "notes"], capsys, monkeypatch)
    assert code == 1 and "would replace" not in err and "contains notes/todo.txt, an input" in err, err
    assert tree_digest(sample.parent) == before


@pytest.mark.parametrize(
    ("to", "other"), [("runs/gemma-3/hub", "runs/gemma-3"), ("runs", "runs/gemma-3"), (".", "{cwd}")]
)
def test_a_local_target_is_never_an_input_either(
    to: str, other: str, cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tree_digest(cwd)
    code, err = cli(["release", "v0.5", "--manifest", MANIFEST, "--to", to], capsys, monkeypatch)
    assert code == 1 and err.startswith(f"Error: target {to} "), err
    assert other.replace("{cwd}", str(cwd)) in err.splitlines()[0]
    assert tree_digest(cwd) == before
