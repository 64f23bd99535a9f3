"""Prompt files: resolved next to the pipeline YAML, rendered with Jinja2, hashed by their text.

Prompts live as files beside the pipelines (`pipelines/prompts/`) so they can be reviewed and versioned like
code; the fingerprint covers their text, not their path, so editing a prompt invalidates its stage's cache.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationInfo

from lmsynth import project


def render(template: str, **variables: Any) -> str:
    """Render a prompt template; an unknown variable is an error rather than an empty string."""
    return _compiled(template).render(**variables).strip()


def read_prompt(path: Path) -> str:
    """The text of a prompt file."""
    return Path(path).read_text(encoding="utf-8")


def default_prompt(name: str) -> Path:
    """A stage's default prompt: `pipelines/prompts/NAME` of the project folder, else the shipped one."""
    return project.find(f"pipelines/prompts/{name}")


# Private helpers


@functools.lru_cache(maxsize=64)
def _compiled(template: str) -> Any:
    """A stage renders one template per prompt: compile it once (compiling costs ~100× rendering)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    return env.from_string(template)


def _resolve_prompt(value: Path, info: ValidationInfo) -> Path:
    """Relative prompt paths are relative to the YAML file being loaded; the file must exist."""
    path = Path(value)
    base = (info.context or {}).get("path") if info.context else None
    if not path.is_absolute() and base is not None:
        path = Path(base).resolve().parent / path
    if not path.is_file():
        raise ValueError(f"prompt file not found: {path}")
    return path


PromptPath = Annotated[Path, AfterValidator(_resolve_prompt)]
