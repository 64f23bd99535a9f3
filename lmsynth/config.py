"""The base of every config and file-format model, and the one YAML reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lmsynth.errors import ConfigError


class StrictModel(BaseModel):
    """Unknown keys are errors, and a loaded config cannot change under a running stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def load_yaml(path: Path | str, model: type[M]) -> M:
    """Read one YAML file into `model`, reporting the file and the key path of the first error.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    path = Path(path)
    data = read_yaml(path)
    try:
        return validate_strict(model, data if data is not None else {}, context={"path": path})
    except ValidationError as e:
        raise config_error_from(path, e) from e


def validate_strict(model: type[M], data: Any, *, context: dict | None = None) -> M:
    """Validate parsed YAML/JSON data with no type coercion: `"yes"` or `1` is no boolean, `"3"` no integer.

    The data goes through JSON so that strict mode still reads paths and tuples from strings and lists.
    """
    return model.model_validate_json(json.dumps(data, default=str), strict=True, context=context)


def read_yaml(path: Path | str) -> Any:
    """The parsed YAML of `path`, unvalidated.

    Raises:
        ConfigError: the file is missing or is not YAML.
    """
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(path, None, f"not valid YAML: {str(e).splitlines()[0]}") from e


def config_error_from(path: Path | str, err: ValidationError) -> ConfigError:
    """Turn the first pydantic error into a `ConfigError` naming the dotted key path."""
    first = err.errors()[0]
    key = dotted(first["loc"])
    return ConfigError(path, key or None, first["msg"])


def dotted(loc: tuple) -> str:
    """`("subsets", 0, "license")` → `subsets[0].license`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
