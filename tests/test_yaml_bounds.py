"""Every YAML lmsynth reads is bounded: alias bombs ("billion laughs") and oversized files are refused fast."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from lmsynth.config import YAML_MAX_BYTES, load_yaml, read_yaml
from lmsynth.errors import ConfigError
from lmsynth.pipeline.config import load_pipeline_config
from lmsynth.release.dataset_cards import FieldDocs
from lmsynth.release.release_yaml import load_manifest
from lmsynth.templates import load_rules


def laughs(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" document: `width ** levels` strings from about a kilobyte of YAML."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for k in range(1, levels):
        lines.append(f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def bomb_in(key: str, valid: str) -> str:
    """A config that is otherwise fine, with a bomb hung under `key`."""
    return laughs() + f"{key}: *l8\n" + valid


PIPELINE = "name: p\nmodels: {m: {backend: fake}}\ngenerate: {model: m}\n"
READERS = {
    "pipeline": (load_pipeline_config, "description", PIPELINE),
    "manifest": (load_manifest, "notes", "version: v0.1\n"),
    "rules": (load_rules, "extra", "rules: []\n"),
    "card fields": (lambda p: load_yaml(p, FieldDocs), "extra", "fields: []\n"),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_an_alias_bomb_is_refused_naming_the_file(reader: str, tmp_path: Path) -> None:
    load, key, valid = READERS[reader]
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb_in(key, valid))
    assert len(path.read_bytes()) < 2000
    with pytest.raises(ConfigError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    assert "expands to more than 100,000 values (YAML anchors and aliases)" in message


def test_aliases_within_the_bound_are_read(tmp_path: Path) -> None:
    """PyYAML writes anchors for shared values; such a file (a manifest written by a script) still loads."""
    shared = {"license": "cc-by-4.0", "tags": ["a", "b"]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"x": shared, "y": shared, "z": [shared] * 3}))
    assert "&id001" in path.read_text()
    assert read_yaml(path) == {"x": shared, "y": shared, "z": [shared] * 3}


@pytest.mark.parametrize("text", ["a: &x [1, *x]\n", "a: &x {b: *x}\n", "- &x [*x]\n"])
def test_an_alias_inside_its_own_anchor_is_refused(text: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"c\.yaml: line 1: YAML alias `x` inside its own anchor"):
        read_yaml(path)


def test_an_alias_bomb_of_any_shape_is_refused(tmp_path: Path) -> None:
    """Wide and shallow, narrow and deep, through merge keys: each is refused at the bound."""
    shapes = {
        "wide": "a: &a [" + ", ".join(["x"] * 400) + "]\nb: &b [" + ", ".join(["*a"] * 400) + "]\n",
        "deep": laughs(levels=20, width=2),
        "merge": "a: &a {"
        + ", ".join(f"k{i}: {i}" for i in range(500))
        + "}\nb: &b {<<: *a, x: [*a, *a, *a]}\nc: &c ["
        + ", ".join(["*b"] * 100)
        + "]\n",
    }
    for name, text in shapes.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=rf"{name}\.yaml: line \d+: expands to more than 100,000 values"):
            read_yaml(path)


@pytest.mark.parametrize(
    "text", ["a: " + "[" * 50_000 + "]" * 50_000, "a:\n" + "".join("  " * i + "k:\n" for i in range(1, 300))]
)
def test_nesting_deeper_than_the_bound_is_refused_not_a_recursion_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"deep\.yaml: line \d+: nested more than 100 levels deep"):
        read_yaml(path)


def test_an_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * YAML_MAX_BYTES + b"\n")
    with pytest.raises(ConfigError, match=r"big\.yaml: larger than 1 MiB"):
        read_yaml(path)


def test_the_project_files_are_read(tmp_path: Path) -> None:
    from lmsynth import constants

    root = constants.PIPELINES_DIR.parent
    for path in [*root.glob("pipelines/*.yaml"), *root.glob("release/*.yaml"), root / "cards" / "fields.yaml"]:
        assert read_yaml(path), path
    assert load_rules().rules


def test_a_bomb_is_refused_in_bounded_memory_and_time(tmp_path: Path) -> None:
    """In a child with 600 MB of address space: the bomb is refused, not expanded (which takes gigabytes)."""
    for name, (_, key, valid) in READERS.items():
        (tmp_path / f"{name.replace(' ', '_')}.yaml").write_text(bomb_in(key, valid))
    code = textwrap.dedent(
        f"""
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))
        from pathlib import Path
        from lmsynth.config import load_yaml
        from lmsynth.errors import ConfigError
        from lmsynth.pipeline.config import load_pipeline_config
        from lmsynth.release.dataset_cards import FieldDocs
        from lmsynth.release.release_yaml import load_manifest
        from lmsynth.templates import load_rules
        root = Path({str(tmp_path)!r})
        loaders = {{"pipeline": load_pipeline_config, "manifest": load_manifest, "rules": load_rules,
                    "card_fields": lambda p: load_yaml(p, FieldDocs)}}
        for name, load in loaders.items():
            t0 = time.perf_counter()
            try:
                load(root / f"{{name}}.yaml")
            except ConfigError as e:
                print(name, round(time.perf_counter() - t0, 3), "expands to more than" in str(e))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln.split() for ln in res.stdout.splitlines()]
    assert [ln[0] for ln in lines] == ["pipeline", "manifest", "rules", "card_fields"]
    assert all(ln[2] == "True" for ln in lines)
    assert all(float(ln[1]) < 2.0 for ln in lines), lines  # milliseconds when idle; generous for a loaded machine


def test_lmsynth_run_refuses_a_bomb_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb_in("description", PIPELINE))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmsynth",
            "run",
            str(path),
            "--input",
            str(tmp_path / "prep"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and "bomb.yaml: line" in errors[0] and "expands to more than 100,000 values" in errors[0]
    assert "Traceback" not in res.stderr and len(lines) <= 2, lines  # the error and the LMSYNTH_DEBUG hint
