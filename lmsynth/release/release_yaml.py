"""Release manifests (`release/<version>.yaml`): what a version is built from.

A release manifest says what goes into a version: its subsets (one `configs:` entry each), the models and
settings that produced them, their licenses and where their records are. It is cumulative: v0.5 carries
the v0.1 and v0.3 subsets too. License data is mandatory for every subset; a manifest missing any of it
is refused with a `ManifestError` naming the subset and the field, before anything is built.

The built tree's `MANIFEST.json` is the tree contract's (`lmsynth.tree.manifest_json`), which also holds the
license and model models both files share.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, ValidationError, field_validator

from lmsynth.config import StrictModel, dotted, read_yaml, validate_strict
from lmsynth.errors import ConfigError, ManifestError
from lmsynth.targets.gated import GatedRepoSpec
from lmsynth.targets.schemes import HF_URI_PATTERN, MS_URI_PATTERN
from lmsynth.tree.manifest_json import LicenseSpec, ModelRef


VERSION_PATTERN = r"^v\d+\.\d+(\.\d+)?$"
CONFIG_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
GatedSet = Literal["default", "unsafe"]
# The names a manifest gives its targets (`targets:`), which `--to` / `--from` accept besides a URI.
TargetName = Literal["local", "hf", "ms"]
TARGET_NAMES: tuple[str, ...] = get_args(TargetName)


class GenerationParams(StrictModel):
    """Sampling settings of the response generator (as the original scripts exposed them)."""

    n: int = Field(ge=1, le=64, description="Responses sampled per instruction.")
    temperature: float = Field(ge=0, le=2)
    top_p: float = Field(gt=0, le=1)
    max_tokens: int = Field(ge=1)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    system_message: str | None = None
    target_language: str = "ja"


class JudgeParams(StrictModel):
    """Settings of the LLM judge."""

    mode: Literal["mt-bench", "ultrafeedback"]
    temperature: float = Field(0.0, ge=0, le=2)
    scale: str = Field("0-10", description="Rating scale shown in the card.")


class ResponsesPerInstruction(StrictModel):
    """How many responses each instruction has, per language (0: the language is absent)."""

    ja: int = Field(ge=0)
    en: int = Field(0, ge=0)


class SubsetSpec(StrictModel):
    """One subset of a release: a `configs:` entry, its Parquet shards and its gated files."""

    config: str = Field(pattern=CONFIG_PATTERN, description="Config name for `load_dataset(path, config)`.")
    title: str = Field(min_length=1)
    introduced_in: str = Field(pattern=VERSION_PATTERN)
    generator: ModelRef
    judge: ModelRef
    generation: GenerationParams
    judge_params: JudgeParams
    languages: list[str] = Field(min_length=1)
    responses_per_instruction: ResponsesPerInstruction
    multiturn: bool = Field(False, description="Records carry `synthesized_multiturn_conversation` (v0.3).")
    license: LicenseSpec
    records: str = Field(
        min_length=1,
        description="Run folder or JSONL of SynthRecords: a path relative to the runs root (`--runs`, default the "
        "current folder), or a URL such as `hf://datasets/ORG/NAME@REV/PATH`.",
    )
    prepared: str | None = Field(
        None, min_length=1, description="Prepare output (path or URL): lets the leak guard know the EN originals."
    )
    encrypt: list[GatedSet] = Field(default_factory=lambda: ["default", "unsafe"])
    pipelines: list[Path] = Field(default_factory=list, description="Pipeline definitions and prompts to ship.")


class ChangelogEntry(StrictModel):
    """One version in the card's changelog."""

    version: str = Field(pattern=VERSION_PATTERN)
    date: str | None = None
    changes: list[str] = Field(min_length=1)


class TargetsSpec(StrictModel):
    """Named targets; `--to` overrides the default."""

    local: str = "hub"
    hf: str | None = Field(None, pattern=HF_URI_PATTERN)
    ms: str | None = Field(None, pattern=MS_URI_PATTERN)
    default: TargetName = "local"

    def resolve(self, name: str | None = None) -> str:
        """The URI of target `name` (default: `default`); anything else is taken as a URI itself."""
        key = name or self.default
        if key in TARGET_NAMES:
            uri = getattr(self, key)
            if uri is None:
                raise ConfigError("targets", key, "this target has no URI in the manifest")
            return uri
        return key


class ReleaseManifest(StrictModel):
    """`release/<version>.yaml`: everything a release is made of, except the records themselves."""

    version: str = Field(pattern=VERSION_PATTERN)
    pretty_name: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    citation: str = Field(min_length=1)
    changelog: list[ChangelogEntry] = Field(min_length=1)
    targets: TargetsSpec = Field(default_factory=TargetsSpec)
    instructions_license: LicenseSpec = Field(description="License of the gated JA instructions.")
    scripts_license: LicenseSpec = Field(description="License of the pipeline definitions and scripts.")
    subsets: list[SubsetSpec] = Field(min_length=1)
    gated_repo: GatedRepoSpec | None = Field(
        None, description="Also publish the JA instructions in plaintext to a separate, Hub-gated repo."
    )

    @field_validator("subsets")
    @classmethod
    def _unique_configs(cls, subsets: list[SubsetSpec]) -> list[SubsetSpec]:
        seen: set[str] = set()
        for s in subsets:
            if s.config in seen:
                raise ValueError(f"config `{s.config}` appears twice")
            seen.add(s.config)
        return subsets

    def subset(self, config: str) -> SubsetSpec:
        """The subset named `config`."""
        for s in self.subsets:
            if s.config == config:
                return s
        raise ManifestError(
            "manifest", config, None, f"no subset `{config}`; known: {[s.config for s in self.subsets]}"
        )


def load_manifest(path: Path | str) -> ReleaseManifest:
    """Read and validate a release manifest.

    Raises:
        ManifestError: a subset is invalid (names the subset and the field, e.g. `license.link`).
        ConfigError: the file is missing, not YAML, or invalid outside the subsets.
    """
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(path, None, "a release manifest is a mapping")
    _check_licenses_present(path, data)
    try:
        return validate_strict(ReleaseManifest, data)
    except ValidationError as e:
        raise _manifest_error(path, data, e) from e


# Private helpers

_LICENSE_FIELDS = ("instructions_license", "scripts_license")


def _subset_name(data: dict, index: object) -> str | None:
    subsets = data.get("subsets")
    if isinstance(index, int) and isinstance(subsets, list) and index < len(subsets):
        s = subsets[index]
        if isinstance(s, dict) and isinstance(s.get("config"), str):
            return s["config"]
        return f"#{index}"
    return None


def _check_licenses_present(path: Path, data: dict) -> None:
    """A subset without a license mapping is refused first, whatever else is wrong with it."""
    subsets = data.get("subsets")
    if not isinstance(subsets, list):
        return
    for i, s in enumerate(subsets):
        if isinstance(s, dict) and not s.get("license"):
            raise ManifestError(path, _subset_name(data, i), "license", "license data is missing")


def _manifest_error(path: Path, data: dict, err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    loc = first["loc"]
    msg = re.sub(r"^Value error, ", "", first["msg"])
    if len(loc) >= 2 and loc[0] == "subsets" and isinstance(loc[1], int):
        field = dotted(loc[2:]) or None
        if field and field.startswith("license") and first["type"] == "value_error":
            # A cross-field license rule names its field in backticks: report it as the field.
            m = re.search(r"`(\w+)`", msg)
            field = f"license.{m.group(1)}" if m else field
        return ManifestError(path, _subset_name(data, loc[1]), field, msg)
    return ConfigError(path, dotted(loc) or None, msg)
