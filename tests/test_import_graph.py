"""lmsynth's packages import each other in one direction: no cycle, and none of the edges that would make one.

The graph is read from the source with `ast`, so an import inside a function (or under `TYPE_CHECKING`)
counts as much as one at the top: hiding an import in a function does not hide the dependency. Nodes are
lmsynth's subpackages (`release`, `targets`, `tree`, ...) and top-level modules (`llm`, `recover`, ...).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "lmsynth"
# (from, to): what each edge would mean.
FORBIDDEN = {
    ("targets", "release"): "the targets publish trees; they must not know how the builder makes them",
    ("release", "pipeline"): "a release reads run folders, never the pipeline's code",
    ("release", "llm"): "a release calls no model",
    ("pipeline", "cli"): "the CLI drives the pipeline, not the other way round",
}

Edges = dict[tuple[str, str], list[str]]


def import_graph(package: Path = PACKAGE) -> Edges:
    """(importer node, imported node) → the import lines (`path:line: statement`) that make the edge."""
    edges: Edges = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        source = _node(module, package)
        text = path.read_text(encoding="utf-8")
        for stmt in ast.walk(ast.parse(text, filename=str(path))):
            for target in _imported(stmt, module, is_package=path.name == "__init__.py"):
                node = _node(target, package)
                if node is not None and source is not None and node != source:
                    line = ast.get_source_segment(text, stmt) or ""
                    edges[(source, node)].append(f"{rel}:{stmt.lineno}: {' '.join(line.split())}")
    return dict(edges)


def cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_cycle_between_packages() -> None:
    edges = import_graph()
    problems = []
    for component in cycles(edges):
        inside = [
            f"  {a} → {b}: {where}"
            for (a, b), places in sorted(edges.items())
            if a in component and b in component
            for where in places
        ]
        problems.append(f"cycle between {', '.join(component)}:\n" + "\n".join(inside))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("edge", "why"), sorted(FORBIDDEN.items()), ids=[f"{a}->{b}" for a, b in sorted(FORBIDDEN)])
def test_forbidden_edge(edge: tuple[str, str], why: str) -> None:
    places = import_graph().get(edge, [])
    assert not places, f"{edge[0]} must not import {edge[1]} ({why}):\n" + "\n".join(f"  {p}" for p in places)


def module_edges(subpackage: str, package: Path = PACKAGE) -> Edges:
    """(module, module) inside `lmsynth.<subpackage>`: `targets.base` → `targets.schemes`."""
    edges: Edges = defaultdict(list)
    inside = f"lmsynth.{subpackage}"
    for path in sorted((package / subpackage).rglob("*.py")):
        rel = path.relative_to(package.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        text = path.read_text(encoding="utf-8")
        for stmt in ast.walk(ast.parse(text, filename=str(path))):
            names = _imported(stmt, module, is_package=path.name == "__init__.py")
            if isinstance(stmt, ast.ImportFrom):  # `from lmsynth.targets import schemes` imports a module
                names += [f"{n}.{a.name}" for n in names for a in stmt.names]
            for name in names:
                if name.startswith(inside + ".") and (package.parent / (name.replace(".", "/") + ".py")).is_file():
                    if name != module and module != inside:  # the package's __init__ re-exports; it is no module
                        edges[(module, name)].append(f"{rel}:{stmt.lineno}")
    return dict(edges)


def test_no_cycle_between_the_target_modules() -> None:
    """The protocol (`base`) imports no implementation; `registry` picks one; implementations never import it."""
    edges = module_edges("targets")
    assert not cycles(edges), cycles(edges)
    base = sorted(b for a, b in edges if a == "lmsynth.targets.base")
    assert base == [], f"targets/base.py imports {base}"
    into_registry = sorted(a for a, b in edges if b == "lmsynth.targets.registry")
    assert into_registry == [], f"{into_registry} import targets/registry.py"


TARGET_SCHEMES = ("hf://", "ms://", "file://")


def test_uri_schemes_are_known_in_targets_only() -> None:
    """No code outside targets/ tests a target URI's scheme (`x.startswith("hf://")`, `== "ms"`, ...).

    `release/inputs.py` reads the runs of `--runs`/`records:`, which are fsspec URLs (a source, not a target).
    """
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("targets/") or rel == "release/inputs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("startswith", "removeprefix"):
                args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                if any(a.startswith(TARGET_SCHEMES) for a in args):
                    found.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.keyword) and node.arg == "pattern" and isinstance(node.value, ast.Constant):
                if TARGET_SCHEMES[0] in str(node.value.value) or TARGET_SCHEMES[1] in str(node.value.value):
                    found.append(f"{rel}:{node.lineno}")
    assert not found, "scheme tests outside lmsynth/targets/: " + ", ".join(found)


class TestTheGraphReader:
    """The reader itself finds what it must, or the tests above could pass on a blind graph."""

    def test_function_level_and_type_checking_imports_count(self, tmp_path: Path) -> None:
        pkg = _package(
            tmp_path,
            {
                "a/__init__.py": "",
                "a/x.py": "def f():\n    from lmsynth.b import y\n",
                "b/__init__.py": "",
                "b/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lmsynth import c\n",
                "c.py": "import lmsynth.a.x\nfrom lmsynth import __version__\n",
            },
        )
        edges = import_graph(pkg)
        assert set(edges) == {("a", "b"), ("b", "c"), ("c", "a")}
        assert edges[("a", "b")] == ["lmsynth/a/x.py:2: from lmsynth.b import y"]
        assert cycles(edges) == [["a", "b", "c"]]

    def test_relative_imports_and_imports_inside_a_node(self, tmp_path: Path) -> None:
        pkg = _package(
            tmp_path,
            {
                "a/__init__.py": "from . import x\n",
                "a/x.py": "from ..b import y\nfrom .z import w\n",
                "b/__init__.py": "",
            },
        )
        assert set(import_graph(pkg)) == {("a", "b")}

    def test_module_edges_find_a_cycle_inside_a_package(self, tmp_path: Path) -> None:
        pkg = _package(
            tmp_path,
            {
                "t/__init__.py": "",
                "t/base.py": "def f():\n    from lmsynth.t import hf\n",
                "t/hf.py": "from .base import x\n",
            },
        )
        edges = module_edges("t", pkg)
        assert set(edges) == {("lmsynth.t.base", "lmsynth.t.hf"), ("lmsynth.t.hf", "lmsynth.t.base")}
        assert cycles(edges) == [["lmsynth.t.base", "lmsynth.t.hf"]]

    def test_the_real_graph_has_the_known_edges(self) -> None:
        edges = import_graph()
        assert ("release", "targets") in edges and ("targets", "tree") in edges and ("release", "tree") in edges


# Private helpers


def _node(module: str, package: Path) -> str | None:
    """`lmsynth.release.build` → `release`; `lmsynth.llm` → `llm`; the root package and names in it → None."""
    parts = module.split(".")
    if parts[0] != "lmsynth" or len(parts) < 2:
        return None
    name = parts[1]
    return name if (package / name).is_dir() or (package / f"{name}.py").is_file() else None


def _imported(stmt: ast.AST, module: str, *, is_package: bool) -> list[str]:
    """The modules `stmt` imports (`from lmsynth import x` counts as `lmsynth.x`)."""
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    if not isinstance(stmt, ast.ImportFrom):
        return []
    if stmt.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - stmt.level + 1]
        name = ".".join([*base, stmt.module] if stmt.module else base)
    else:
        name = stmt.module or ""
    if name == "lmsynth":
        return [f"lmsynth.{alias.name}" for alias in stmt.names]
    return [name]


def _package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "lmsynth"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text, encoding="utf-8")
    return pkg
