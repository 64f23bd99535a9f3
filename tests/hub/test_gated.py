"""The optional gated repo: gating on before the first upload, gating fields in the card."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmsynth.targets.gated import GatedRepoSpec, publish_gated_repo
from lmsynth.targets.hf import HfTarget
from tests.hub.hf_server import HubState


pytestmark = pytest.mark.hub

SPEC = GatedRepoSpec(
    repo="hf://org/synth-gated",
    prompt="You agree to the LMSYS-Chat-1M Dataset License Agreement.",
    fields={"Name": "text", "Affiliation": "text", "Country": "country", "I agree": "checkbox"},
    mode="manual",
)


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "recovered"
    (src / "gemma3").mkdir(parents=True, exist_ok=True)
    (src / "gemma3" / "instructions-ja.jsonl").write_text('{"conversation_id": "a", "content": "x"}\n')
    return src


def test_gating_is_on_before_any_upload(hf_hub: HubState, tmp_path: Path) -> None:
    result = publish_gated_repo(_src(tmp_path), spec=SPEC, tag="v0.5", metadata={"license": "other"})
    repo = hf_hub.repo("org/synth-gated")
    assert repo.gated == "manual" and repo.tags["v0.5"] == result.commit
    settings = hf_hub.requests.index(("PUT", "/api/datasets/org/synth-gated/settings"))
    first_upload = next(i for i, (m, p) in enumerate(hf_hub.requests) if m == "POST" and "preupload" in p)
    assert settings < first_upload


def test_card_carries_the_gating_fields(hf_hub: HubState, tmp_path: Path) -> None:
    publish_gated_repo(_src(tmp_path), spec=SPEC, tag="v0.5", metadata={"license": "other"})
    card = HfTarget("org/synth-gated").fetch_file("README.md", revision="v0.5").decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["extra_gated_prompt"] == SPEC.prompt
    assert meta["extra_gated_fields"]["Country"] == "country" and meta["license"] == "other"
    data = HfTarget("org/synth-gated").fetch_file("gemma3/instructions-ja.jsonl", revision="v0.5")
    assert data == (tmp_path / "recovered" / "gemma3" / "instructions-ja.jsonl").read_bytes()


def test_republishing_the_same_files_makes_no_commit(hf_hub: HubState, tmp_path: Path) -> None:
    publish_gated_repo(_src(tmp_path), spec=SPEC, tag="v0.5")
    again = publish_gated_repo(_src(tmp_path), spec=SPEC, tag="v0.5")
    assert not again.created_commit
