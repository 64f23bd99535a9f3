"""Dataset cards: the index `README.md` and one `README_<config>.md` per subset, from Jinja2 templates.

The YAML header is a `CardMetadata` model dumped with `None` dropped and keys in declaration order; the
body comes from the templates in `cards/`. Counts, `size_categories` and the `configs:` globs come from
what was built, never typed by hand. Card links to files point at the version tag on a hub
(`.../resolve/<version>/<path>`) and are relative for a local folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import Field

from lmsynth import project
from lmsynth.config import StrictModel, load_yaml
from lmsynth.release.data_files import arrow_schema
from lmsynth.release.release_yaml import ReleaseManifest, SubsetSpec
from lmsynth.tree import layout
from lmsynth.tree.manifest_json import SubsetCounts


INDEX_TEMPLATE = "index.md.j2"
SUBSET_TEMPLATE = "subset.md.j2"
FIELDS_FILE = "fields.yaml"
SOURCE_DATASET = "lmsys/lmsys-chat-1m"
LICENSE_NAME = "mixed"


class DataFile(StrictModel):
    """One `data_files` entry of a config."""

    split: str
    path: str


class CardConfig(StrictModel):
    """One `configs:` entry."""

    config_name: str
    data_files: list[DataFile]
    default: bool | None = None


class SplitInfo(StrictModel):
    """One split of a `dataset_info` entry (all three fields, or `datasets` warns and ignores the entry)."""

    name: str
    num_bytes: int = Field(description="Size of the split as Arrow in memory, as `datasets` records it.")
    num_examples: int


class ConfigInfo(StrictModel):
    """One `dataset_info` entry: row counts and Parquet bytes of a config.

    Besides informing the Hub, it makes `datasets`' cache key of a local folder change with the content:
    that key hashes the card's configs and dataset_info, not the files, so without it a re-released folder
    would load stale cached rows.
    """

    config_name: str
    features: list[dict] = Field(description="`datasets.Features` of the shards' Arrow schema, in YAML form.")
    splits: list[SplitInfo]
    download_size: int
    dataset_size: int


class CardMetadata(StrictModel):
    """The YAML header of a card (Hub dataset-card vocabulary)."""

    license: str = "other"
    license_name: str = LICENSE_NAME
    license_link: str
    language: list[str]
    task_categories: list[str] = Field(default_factory=lambda: ["text-generation"])
    size_categories: list[str]
    source_datasets: list[str] = Field(default_factory=lambda: [SOURCE_DATASET])
    pretty_name: str
    tags: list[str] = Field(default_factory=list)
    configs: list[CardConfig]
    dataset_info: list[ConfigInfo] | None = None

    def to_yaml(self) -> str:
        """The header text between the `---` lines."""
        return yaml.safe_dump(
            self.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True, width=1000
        )


class FieldDoc(StrictModel):
    """One field description of `cards/fields.yaml`."""

    name: str
    type: str
    public: bool
    description: str


class FieldDocs(StrictModel):
    """`cards/fields.yaml`."""

    fields: list[FieldDoc]


@dataclass(frozen=True)
class SubsetCardData:
    """What the templates know about a built subset."""

    spec: SubsetSpec
    counts: SubsetCounts
    shards: list[str]
    figures: list[str]
    gated_paths: list[str]
    shard_bytes: int = 0
    arrow_bytes: int = 0

    @property
    def card(self) -> str:
        """Path of the subset's card."""
        return layout.subset_card(self.spec.config)


def size_category(n: int) -> str:
    """The Hub's size bucket for `n` records."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    for limit, label in ((10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return label
    return "n>1B"


def card_metadata(
    manifest: ReleaseManifest, subsets: list[SubsetCardData], *, license_link: str, tags: list[str] | None = None
) -> CardMetadata:
    """The YAML header for a card listing `subsets` (the first one is the default config)."""
    languages: list[str] = []
    for s in subsets:
        for lang in s.spec.languages:
            if lang not in languages:
                languages.append(lang)
    total = sum(s.counts.records for s in subsets)
    return CardMetadata(
        license_link=license_link,
        language=languages,
        size_categories=[size_category(total)],
        pretty_name=manifest.pretty_name if len(subsets) > 1 else subsets[0].spec.title,
        tags=tags if tags is not None else manifest.tags,
        configs=[
            CardConfig(
                config_name=s.spec.config,
                data_files=[DataFile(split=layout.SPLIT, path=layout.data_glob(s.spec.config))],
                default=True if i == 0 else None,
            )
            for i, s in enumerate(subsets)
        ],
        dataset_info=[
            ConfigInfo(
                config_name=s.spec.config,
                features=features_yaml(s.spec),
                splits=[SplitInfo(name=layout.SPLIT, num_bytes=s.arrow_bytes, num_examples=s.counts.records)],
                download_size=s.shard_bytes,
                dataset_size=s.arrow_bytes,
            )
            for s in subsets
        ],
    )


def features_yaml(spec: SubsetSpec) -> list[dict]:
    """The `features:` of a subset's `dataset_info`: what `datasets.Features` writes for the shards' schema.

    Written here rather than through `datasets` (a test checks they agree), which a release does not import.
    """
    return [{"name": f.name, **_feature_yaml(f.type)} for f in arrow_schema(spec)]


def _feature_yaml(t) -> dict:  # noqa: ANN001 — a pyarrow DataType
    import pyarrow as pa

    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **_feature_yaml(f.type)} for f in t]}
    if pa.types.is_list(t):
        inner = _feature_yaml(t.value_type)
        return {"list": inner["struct"] if "struct" in inner else inner}
    names = {pa.string(): "string", pa.bool_(): "bool", pa.int64(): "int64", pa.float64(): "float64"}
    return {"dtype": names[t]}


def render_cards(
    manifest: ReleaseManifest,
    subsets: list[SubsetCardData],
    *,
    link_base: str = "",
    load_path: str = ".",
    revision: str | None = None,
    cards_dir: Path | None = None,
) -> dict[str, str]:
    """Render the index card and every subset card; returns `{path in tree: text}`.

    Args:
        manifest: The release manifest.
        subsets: The built subsets, in manifest order.
        link_base: Prefix of links to files (`https://huggingface.co/datasets/ORG/NAME/resolve/v0.5/`), or ""
            for links relative to the tree.
        load_path: What `load_dataset` is given in the examples (repo id or folder).
        revision: The `revision=` of the examples (the tag on a hub).
        cards_dir: Templates folder (default: `cards/` of the project folder, file by file, else the shipped one).
    """
    import jinja2

    # Neither folder there: the project's is named in the error.
    search = [cards_dir] if cards_dir else (project.search_path("cards") or [project.project_dir() / "cards"])
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in search]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 — Markdown, not HTML
    )
    fields_file = next((d / FIELDS_FILE for d in search if (d / FIELDS_FILE).is_file()), search[0] / FIELDS_FILE)
    fields = load_yaml(fields_file, FieldDocs).fields
    present = {"synthesized_assistant_responses_en", "synthesized_multiturn_conversation"}

    def fields_for(specs: list[SubsetSpec]) -> list[FieldDoc]:
        has_en = any(s.responses_per_instruction.en for s in specs)
        has_mt = any(s.multiturn for s in specs)
        absent = {f for f, ok in zip(sorted(present), (has_en, has_mt), strict=True) if not ok}
        return [f for f in fields if f.name not in absent]

    def link(path: str) -> str:
        return f"{link_base}{path}"

    common = {
        "m": manifest,
        "link": link,
        "load_path": load_path,
        "revision": revision,
        "gated_dir": layout.GATED_DIR,
        "gated_example": layout.gated_path(subsets[0].spec.config, unsafe=False),
    }
    out: dict[str, str] = {}
    meta = card_metadata(manifest, subsets, license_link=link(f"{layout.INDEX_CARD}#license"))
    out[layout.INDEX_CARD] = env.get_template(INDEX_TEMPLATE).render(
        **common, subsets=subsets, metadata_yaml=meta.to_yaml(), fields=fields_for([s.spec for s in subsets])
    )
    for s in subsets:
        meta = card_metadata(manifest, [s], license_link=link(f"{s.card}#license"))
        out[s.card] = env.get_template(SUBSET_TEMPLATE).render(
            **common, s=s, metadata_yaml=meta.to_yaml(), fields=fields_for([s.spec])
        )
    return out
