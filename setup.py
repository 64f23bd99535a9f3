"""Build step: the repository's top-level release/, pipelines/ and cards/ go into the wheel as lmsynth/data/.

They stay the one copy people edit; `build_py` copies them at build time (wheel, and wheel from sdist, whose
MANIFEST.in carries them). An editable install reads them from the checkout instead (lmsynth.resources).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


ROOT = Path(__file__).resolve().parent
FOLDERS = ("release", "pipelines", "cards")


class BuildPyWithProjectFiles(build_py):
    """`build_py`, then a copy of the project folders into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        data = Path(self.build_lib) / "lmsynth" / "data"
        for folder in FOLDERS:
            src = ROOT / folder
            if not src.is_dir():
                raise SystemExit(f"{src}: missing; the wheel must carry {', '.join(FOLDERS)}")
            shutil.rmtree(data / folder, ignore_errors=True)
            shutil.copytree(src, data / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithProjectFiles})
