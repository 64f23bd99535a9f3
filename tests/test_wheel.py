"""A built wheel, installed without -e, runs its verbs from an empty folder: it carries release/, pipelines/, cards/.

The wheel is installed with `pip install --no-deps --target DIR` and run with `PYTHONPATH=DIR` (its dependencies
come from the test's own environment): each command first checks that `lmsynth` is imported from DIR, not from
the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmsynth.testing import write_run_dir


ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"llama-3.1": "v0.1", "gemma-2": "v0.3", "gemma-3": "v0.5"}
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs", "hub", "tests", "bench"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout built into a wheel and installed (not editable) into a folder of its own."""
    wheels, target = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site")
    # A copy of the checkout: pip builds in the source folder, and a `build/` left there could leak into wheels.
    src = Path(shutil.copytree(ROOT, tmp_path_factory.mktemp("src") / "lmsynth", ignore=_NOT_SOURCE))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)]
    res = subprocess.run(build, cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = wheels.glob("lmsynth-*.whl")
    res = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True)
    assert res.returncode == 0, res.stderr
    return target


def lmsynth(site: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`lmsynth ARGS` from the wheel in `site`, run in `cwd`; fails unless lmsynth came from `site`."""
    check = (
        "import sys, lmsynth; from pathlib import Path; "
        f"assert Path(lmsynth.__file__).is_relative_to({str(site)!r}), lmsynth.__file__; "
        "from lmsynth.cli import main; sys.argv = ['lmsynth', *sys.argv[1:]]; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("LMSYNTH_HOME", None)
    return subprocess.run(
        [sys.executable, "-c", check, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_wheel_carries_the_project_files(installed: Path) -> None:
    data = installed / "lmsynth" / "data"
    for rel in ("release/v0.5.yaml", "release/demo.yaml", "pipelines/demo.yaml", "pipelines/prompts/judge_single.txt"):
        assert (data / rel).is_file(), rel
    assert (data / "cards" / "index.md.j2").is_file() and (data / "cards" / "fields.yaml").is_file()
    assert (installed / "lmsynth" / "sample" / "lmsys_sample.jsonl").is_file()
    # One copy in git: what the wheel carries is the repository's top-level folders, byte for byte.
    for folder in ("release", "pipelines", "cards"):
        ours = sorted(p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*") if p.is_file())
        assert ours == sorted(p.relative_to(data / folder) for p in (data / folder).rglob("*") if p.is_file())
        assert all((data / folder / p).read_bytes() == (ROOT / folder / p).read_bytes() for p in ours)


def test_release_v05_from_an_empty_folder_reads_the_shipped_manifest_and_renders_the_card(
    installed: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "staged"
    for config, shape in SHAPES.items():
        write_run_dir(runs / "runs" / config, 8, shape=shape, seed=3, unsafe_n=2)
    write_run_dir(runs / "unused", 8, seed=3, prepared=runs / "runs" / "prepared")
    empty = tmp_path / "empty"
    empty.mkdir()
    res = lmsynth(installed, empty, "release", "v0.5", "--runs", str(runs), "--dry-run", "--out", "tree")
    assert res.returncode == 0, res.stderr
    shipped = installed / "lmsynth" / "data" / "release" / "v0.5.yaml"
    assert f"manifest: {shipped}" in res.stdout
    card = (empty / "tree" / "README.md").read_text(encoding="utf-8")
    assert yaml.safe_load(shipped.read_text(encoding="utf-8"))["pretty_name"] in card
    for config in SHAPES:
        assert f"config_name: {config}" in card
    assert (empty / "tree" / "pipelines" / "v0.5-gemma3.yaml").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["tree"]  # nothing else written where it ran

    # The project folder wins: a release/v0.5.yaml and a card template of its own, given by --project.
    mine = tmp_path / "mine"
    (mine / "release").mkdir(parents=True)
    (mine / "cards").mkdir()
    manifest = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    manifest["pretty_name"] = "My own synth"
    (mine / "release" / "v0.5.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
    template = (installed / "lmsynth" / "data" / "cards" / "index.md.j2").read_text(encoding="utf-8")
    (mine / "cards" / "index.md.j2").write_text(template + "\nBuilt by my project.\n", encoding="utf-8")
    args = ["--project", str(mine), "release", "v0.5", "--runs", str(runs), "--dry-run", "--out", "tree2"]
    res = lmsynth(installed, empty, *args)
    assert res.returncode == 0, res.stderr
    assert f"manifest: {mine / 'release' / 'v0.5.yaml'}" in res.stdout
    card = (empty / "tree2" / "README.md").read_text(encoding="utf-8")
    assert "My own synth" in card and card.endswith("Built by my project.\n")


def test_run_of_the_shipped_demo_pipeline_with_a_scripted_model(installed: Path, tmp_path: Path) -> None:
    # The shipped demo pipeline, its model swapped for a scripted one, beside the shipped prompts it names.
    shipped = installed / "lmsynth" / "data" / "pipelines"
    demo = yaml.safe_load((shipped / "demo.yaml").read_text(encoding="utf-8"))
    demo["models"] = {"smollm2": {"backend": "fake", "replies": ["回答です。 Rating: [[7]]"]}}
    demo["judge"]["structured_output"] = False
    (shipped / "demo-scripted.yaml").write_text(yaml.safe_dump(demo, allow_unicode=True), encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    res = lmsynth(installed, empty, "prepare", "--out", "prepared")  # the bundled sample, from the wheel
    assert res.returncode == 0, res.stderr
    res = lmsynth(installed, empty, "run", "pipelines/demo-scripted.yaml", "--input", "prepared", "--out", "run")
    assert res.returncode == 0, res.stderr
    assert "Generating train split" not in res.stdout + res.stderr  # lmsynth's progress, not `datasets`'
    info = yaml.safe_load((empty / "run" / "run.json").read_text(encoding="utf-8"))
    assert info["counts"]["instructions"] == demo["limit"] and info["counts"]["responses_ja"], info["counts"]
