"""Every config of a release loads without a logged warning, from a local folder and at a Hub tag; cards hold no
local absolute path."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
import pytest

from lmsynth.release.build import build_release
from lmsynth.targets.hf import HfTarget
from tests.hub.hf_server import HubState
from tests.release.conftest import N, Project


pytestmark = pytest.mark.hub
CONFIGS = ("llama-3.1", "gemma-2", "gemma-3")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    """Every WARNING+ record of `datasets`, `huggingface_hub` and the root logger (the libraries do not propagate)."""
    handler = _Collect()
    loggers = [logging.getLogger(), logging.getLogger("datasets"), logging.getLogger("huggingface_hub")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def test_local_and_hub_loads_log_no_warning_and_cards_hold_no_local_path(
    project: Project, hf_hub: HubState, tmp_path: Path
) -> None:
    build_release("v0.5", manifest_path=project.manifest, target=str(project.hub), passphrase=project.passphrase)
    cards = {p.name: p.read_text(encoding="utf-8") for p in project.hub.glob("README*.md")}
    assert len(cards) == 1 + len(CONFIGS)
    for name, text in cards.items():
        assert str(project.root) not in text and str(tmp_path) not in text, name
    assert 'load_dataset("hub", "llama-3.1"' in cards["README.md"]

    build_release("v0.5", manifest_path=project.manifest, target="hf://org/synth", passphrase=project.passphrase)
    with warnings_logged() as logged:
        for config in CONFIGS:
            local = datasets.load_dataset(str(project.hub), config, split="train", cache_dir=str(tmp_path / "c1"))
            hub = datasets.load_dataset(
                "org/synth", config, split="train", revision="v0.5", cache_dir=str(tmp_path / "c2")
            )
            assert local.num_rows == hub.num_rows == N
            assert local.info.splits["train"].num_bytes > 0  # the card's dataset_info was read, not ignored
    assert [r.getMessage() for r in logged] == []
    card = HfTarget("org/synth").fetch_file("README.md", revision="v0.5").decode()
    assert "num_bytes:" in card and "features:" in card
