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


YAML_MAX_BYTES = 1 << 20  # lmsynth's largest YAML (a release manifest) is a few KB
YAML_MAX_VALUES = 100_000  # scalars, lists and mappings, aliases counted at their full size each time
YAML_MAX_DEPTH = 100  # nested lists and mappings (PyYAML composes recursively: deeper would overflow the stack)


def read_yaml(path: Path | str) -> Any:
    """The parsed YAML of `path`, unvalidated: the one way lmsynth reads a YAML file.

    Bounded, so that no config can exhaust memory: a file over `YAML_MAX_BYTES` is refused before it is
    parsed, and a document that expands past `YAML_MAX_VALUES` through its aliases is refused while it is
    composed (a "billion laughs" file of a kilobyte would otherwise expand to gigabytes when validated), as
    is one nested deeper than `YAML_MAX_DEPTH`.
    Aliases within the bound stay legal: PyYAML writes them for shared values (`&id001`).

    Raises:
        ConfigError: the file is missing, too large, not YAML, or expands too far.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(YAML_MAX_BYTES + 1)
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror or e}") from e
    if len(data) > YAML_MAX_BYTES:
        raise ConfigError(path, None, f"larger than {YAML_MAX_BYTES // (1 << 20)} MiB: not an lmsynth config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 (byte {e.start})") from e
    return parse_yaml(text, path=path)


def parse_yaml(text: str, *, path: Path | str) -> Any:
    """Parse YAML text read from `path` (named in errors), bounded as `read_yaml` says.

    Raises:
        ConfigError: the text is too large, is not YAML, or expands too far.
    """
    if len(text) > YAML_MAX_BYTES:
        raise ConfigError(path, None, f"larger than {YAML_MAX_BYTES // (1 << 20)} MiB: not an lmsynth config")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 — a SafeLoader that also bounds aliases
    except _TooLarge as e:
        raise ConfigError(path, None, str(e)) from e
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


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


class _TooLarge(Exception):
    """A YAML document that expands past `YAML_MAX_VALUES` through its aliases, or refers to itself."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting what each node expands to as it is composed, aliases included.

    An alias adds the whole size of its anchored node, so a "billion laughs" document is refused a few
    levels in, before anything is built; an alias inside its own anchor (a recursive document) is refused too.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        alias = self.peek_event() if self.check_event(yaml.AliasEvent) else None
        self._depth += 1
        if self._depth > YAML_MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise _TooLarge(f"line {line}: nested more than {YAML_MAX_DEPTH} levels deep: not an lmsynth config")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias is not None:
            if id(node) not in self._sizes:
                raise _TooLarge(f"line {alias.start_mark.line + 1}: YAML alias `{alias.anchor}` inside its own anchor")
            return node
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        else:
            size = 1
        if size > YAML_MAX_VALUES:
            raise _TooLarge(
                f"line {node.start_mark.line + 1}: expands to more than {YAML_MAX_VALUES:,} values "
                "(YAML anchors and aliases): not an lmsynth config"
            )
        self._sizes[id(node)] = size
        return node
