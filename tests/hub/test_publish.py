"""`publish_tree`: the verb the release workflow's publish job calls on the planned artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsynth.errors import LeakError, TargetError
from lmsynth.release.leak_guard import GatedIndex
from lmsynth.release.publish import publish_tree
from tests.hub.hf_server import HubState
from tests.hub.trees import write_manifest, write_tree


pytestmark = pytest.mark.hub

GATED = "これは公開してはいけない翻訳済みの指示文です。絶対に漏らさないこと。"


def test_publishes_a_built_tree_to_hf(hf_hub: HubState, tmp_path: Path) -> None:
    result = publish_tree(write_tree(tmp_path / "t"), to="hf://org/pub", tag="v0.5")
    assert result.target == "hf://org/pub" and result.created_commit
    assert hf_hub.repo("org/pub").tags["v0.5"] == result.commit
    assert hf_hub.repo("org/pub").commits[result.commit].title == "Release v0.5"


def test_planted_leak_is_refused_before_any_request(hf_hub: HubState, tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "t")
    card = tree / "README.md"
    card.write_text(card.read_text() + f"\nExample: {GATED}\n")
    write_manifest(tree, version="v0.5")
    index = GatedIndex()
    index.add(GATED)
    with pytest.raises(LeakError) as err:
        publish_tree(tree, to="hf://org/pub", tag="v0.5", leak_index=index)
    assert err.value.path == "README.md" and GATED not in str(err.value)
    assert hf_hub.requests == []


def test_clean_tree_passes_the_leak_guard(hf_hub: HubState, tmp_path: Path) -> None:
    index = GatedIndex()
    index.add(GATED)
    result = publish_tree(write_tree(tmp_path / "t"), to="hf://org/pub", tag="v0.5", leak_index=index)
    assert result.created_commit


def test_not_a_tree_is_one_clear_line(hf_hub: HubState, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetError) as err:
        publish_tree(tmp_path / "empty", to="hf://org/pub", tag="v0.5")
    assert "MANIFEST.json" in str(err.value) and "\n" not in str(err.value)
    assert hf_hub.requests == []
