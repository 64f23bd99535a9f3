"""The project-folder rule: a user's own `release/`, `pipelines/` and `cards/` files win over the shipped ones.

The project folder is `--project DIR`, else `$LMSYNTH_HOME`, else the current folder. A file the project
folder has (`release/v0.5.yaml`, `pipelines/demo.yaml`, `cards/index.md.j2`, ...) is used; any other is the
one lmsynth ships (`lmsynth.resources`). Nothing is ever looked up next to the installed package.
"""

from __future__ import annotations

from pathlib import Path

from lmsynth import constants


_override: Path | None = None


def set_project(path: Path | None) -> None:
    """Use `path` as the project folder for the rest of this process (`--project`)."""
    global _override
    _override = Path(path) if path is not None else None


def project_dir() -> Path:
    """`--project`, else `$LMSYNTH_HOME`, else the current folder."""
    return _override or constants.LMSYNTH_HOME or Path.cwd()


def find(rel: str | Path) -> Path:
    """`rel` (e.g. `release/v0.5.yaml`) in the project folder if it is there, else the shipped one.

    A path that is absolute is returned as it is; one found in neither place is returned in the project
    folder, so that the error reading it names where the user's copy was expected.
    """
    rel = Path(rel)
    if rel.is_absolute():
        return rel
    mine = project_dir() / rel
    if mine.exists():
        return mine
    shipped = constants.BUNDLED_DIR / rel
    return shipped if shipped.exists() else mine


def search_path(folder: str) -> list[Path]:
    """The folders a lookup in `folder` (e.g. `cards`) searches, the project's first."""
    return [d for d in (project_dir() / folder, constants.BUNDLED_DIR / folder) if d.is_dir()]


def manifest_root(manifest: Path) -> Path:
    """What the relative paths inside a release manifest resolve against.

    The project folder that holds it (`<root>/release/v0.5.yaml` → `<root>`), or the manifest's own folder.
    """
    folder = Path(manifest).resolve().parent
    return folder.parent if folder.name == "release" else folder
