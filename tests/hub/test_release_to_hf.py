"""`build_release` end to end against the HF stand-in: loadable at the tag, leak guard before any request,
verify through the hub, and the optional Hub-gated repo."""

from __future__ import annotations

import gzip
import json

import datasets
import pytest
import yaml

from lmsynth.errors import LeakError
from lmsynth.records import RUN_RECORDS_DIR
from lmsynth.release.build import build_release
from lmsynth.release.verify import verify
from lmsynth.targets.hf import HfTarget
from lmsynth.testing import ja_instruction_for
from tests.hub.hf_server import HubState
from tests.release.conftest import N, Project


pytestmark = pytest.mark.hub
REPO = "hf://org/lmsys-synth"


def _release(project: Project, **kw: object):  # noqa: ANN202
    return build_release("v0.5", manifest_path=project.manifest, target=REPO, passphrase=project.passphrase, **kw)


def test_release_loads_at_the_tag_and_verifies(project: Project, hf_hub: HubState, tmp_path) -> None:  # noqa: ANN001
    res = _release(project)
    assert res.created_commit and hf_hub.repo("org/lmsys-synth").tags["v0.5"] == res.commit
    ds = datasets.load_dataset("org/lmsys-synth", "gemma-3", split="train", revision="v0.5", cache_dir=str(tmp_path))
    assert ds.num_rows == N and "translated_conversation" not in ds.column_names
    card = HfTarget("org/lmsys-synth").fetch_file("README.md", revision="v0.5").decode()
    assert "/resolve/v0.5/" in card or "/tree/v0.5" in card  # links point at the tag, not main
    ver = verify("v0.5", target=REPO, passphrase=project.passphrase)
    assert ver.rows["gemma-3"] == N and ver.gated_checked
    again = _release(project)
    assert not again.created_commit


def test_planted_leak_sends_no_request(project: Project, hf_hub: HubState) -> None:
    shard = next((project.runs("gemma-3") / RUN_RECORDS_DIR).glob("*.jsonl"))
    lines = shard.read_text(encoding="utf-8").splitlines()
    victim = json.loads(lines[5])["conversation_id"]
    rec = json.loads(lines[1])
    rec["synthesized_assistant_responses"][0]["content"] += ja_instruction_for(victim)
    lines[1] = json.dumps(rec, ensure_ascii=False)
    shard.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hf_hub.requests.clear()
    with pytest.raises(LeakError):
        _release(project)
    assert not [r for r in hf_hub.requests if r[0] not in ("GET", "HEAD")], hf_hub.requests  # reads only


def test_gated_repo_receives_plaintext_behind_gating(project: Project, hf_hub: HubState) -> None:
    data = yaml.safe_load(project.manifest.read_text(encoding="utf-8"))
    data["gated_repo"] = {"repo": "hf://org/lmsys-synth-gated", "prompt": "Accept the LMSYS-Chat-1M license."}
    project.manifest.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    _release(project)
    gated = hf_hub.repo("org/lmsys-synth-gated")
    assert gated.gated == "manual" and "v0.5" in gated.tags
    raw = HfTarget("org/lmsys-synth-gated").fetch_file(
        "dataset/gemma-3/lmsys-chat-1m-first-turn-user-instructions-ja.jsonl.gz", revision="v0.5"
    )
    first = json.loads(gzip.decompress(raw).decode().splitlines()[0])
    assert first["translated_conversation"][0]["role"] == "user"
    public = HfTarget("org/lmsys-synth")
    assert (
        public.fetch_file("dataset/gemma-3/lmsys-chat-1m-first-turn-user-instructions-ja.jsonl.gz", revision="v0.5")
        is None
    )
