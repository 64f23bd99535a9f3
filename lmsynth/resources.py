"""The project files lmsynth ships: release manifests, pipelines and their prompts, card templates.

The repository's top-level `release/`, `pipelines/` and `cards/` are the one copy people edit; the build
(`setup.py`'s `build_py`) copies them into the wheel as `lmsynth/data/`. An editable install or a checkout on
`PYTHONPATH` has no `lmsynth/data/`: there they are read from the checkout itself.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path


PACKAGE = "lmsynth"
DATA = "data"
# What the build copies into the package (also what a user's project folder may override).
FOLDERS = ("release", "pipelines", "cards")


@functools.cache
def bundled_root() -> Path:
    """The folder holding the shipped `release/`, `pipelines/` and `cards/`: in the package, else the checkout."""
    package = Path(str(resources.files(PACKAGE))).resolve()
    data = package / DATA
    if all((data / f).is_dir() for f in FOLDERS):
        return data
    return package.parent  # a source checkout (editable install, PYTHONPATH)
