"""The card of an exported folder: YAML header from a model, body from `cards/export.md.j2`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from lmsynth import project
from lmsynth.config import StrictModel
from lmsynth.export.selection import ExportFilters
from lmsynth.recover import RecoverReport
from lmsynth.release.dataset_cards import CardConfig, DataFile
from lmsynth.targets import schemes


TEMPLATE = "export.md.j2"
LMSYS_LICENSE_NAME = "LMSYS-Chat-1M Dataset License Agreement"
LMSYS_LICENSE_LINK = "https://huggingface.co/datasets/lmsys/lmsys-chat-1m"


class ExportCardMetadata(StrictModel):
    """The YAML header of an export's README.md."""

    license: str = "other"
    license_name: str = "mixed"
    license_link: str = "LICENSE.md"
    task_categories: list[str] = Field(default_factory=lambda: ["text-generation"])
    language: list[str]
    tags: list[str]
    source_datasets: list[str] = Field(default_factory=lambda: ["lmsys-chat-1m"])
    configs: list[CardConfig]


def shown_source(target: str) -> str:
    """How the card names the release it came from: as given, a local folder by its name only.

    An absolute path tells readers about the exporter's machine and means nothing on theirs.
    """
    if schemes.scheme_of(target) != schemes.FILE:
        return target
    path = Path(schemes.folder_of(target))
    return path.name if path.is_absolute() else target


def render_card(
    *,
    config: Literal["sft", "dpo"],
    rows: dict[str, int],
    counts: dict[str, int],
    filters: ExportFilters,
    options: dict,
    report: RecoverReport,
    subsets: list[str],
    files: list[str],
) -> str:
    """The README.md text: metadata header (loadable `configs:`), licenses inherited, counts per filter."""
    import jinja2

    splits = [s for s in ("train", "test") if any(f.startswith(f"{config}/{s}-") for f in files)]
    lang = options.get("lang", "ja")
    languages = ["ja", "en"] if lang == "both" else [lang]
    meta = ExportCardMetadata(
        license_link="#licenses",
        language=languages,
        tags=["synthetic", "lmsynth", config],
        configs=[
            CardConfig(
                config_name=config,
                data_files=[DataFile(split=s, path=f"{config}/{s}-*.parquet") for s in splits],
                default=True,
            )
        ],
    )
    header = yaml.safe_dump(meta.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in project.search_path("cards")]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(TEMPLATE).render(
        header=header,
        config=config,
        rows=rows,
        counts=dict(sorted(counts.items())),
        filters=filters.model_dump(mode="json"),
        options=options,
        report=report,
        source=shown_source(report.target),
        subsets=[(name, report.subsets[name]) for name in subsets],
        languages=languages,
        lmsys_license_name=LMSYS_LICENSE_NAME,
        lmsys_license_link=LMSYS_LICENSE_LINK,
    )
