"""`recover` streams the original release from the Hub (`hf://datasets/tokyotech-llm/lmsys-chat-1m-synth`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi

from lmsynth.errors import SourceError
from lmsynth.original.layout import detect
from lmsynth.original.models import OriginalRecoveredRecord
from lmsynth.original.recover import recover_original
from lmsynth.recover import iter_recovered
from tests.hub.hf_server import HubState
from tests.original_release import GEMMA3_RECORDS, IDS, JA, KEY, write_release, write_source


pytestmark = pytest.mark.hub
REPO = "tokyotech-llm/lmsys-chat-1m-synth"
URL = f"hf://datasets/{REPO}"


@pytest.fixture
def published(hf_hub: HubState, tmp_path: Path) -> str:
    """The layout uploaded to the stand-in as the authors host it; returns the commit sha."""
    root = write_release(tmp_path / "release", gemma3=GEMMA3_RECORDS)
    api = HfApi()
    api.create_repo(REPO, repo_type="dataset")
    info = api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=str(root))
    return info.oid


def test_recover_from_the_hub_then_export(published: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmsynth.cli.commands import app

    key = tmp_path / "key.txt"
    key.write_text(KEY.get_secret_value(), encoding="utf-8")
    source = write_source(tmp_path / "lmsys.jsonl")
    runner = CliRunner()
    args = ["recover", "--from", URL, "--subset", "gemma3", "--source", str(source), "--passphrase-file", str(key)]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    recs = list(iter_recovered(tmp_path / "r" / "gemma3", OriginalRecoveredRecord))
    assert [r.conversation_id for r in recs] == IDS[:6]
    assert recs[0].translated_conversation[0].content == JA[IDS[0]]
    report = (tmp_path / "r" / "recover_report.json").read_text(encoding="utf-8")
    assert f'"commit": "{published}"' in report and f'"target": "{URL}"' in report
    dpo = runner.invoke(app, ["export", "dpo", "--input", str(tmp_path / "r"), "--out", str(tmp_path / "d")])
    assert dpo.exit_code == 0, dpo.output
    assert "rows: train 3" in dpo.output


def test_revision_is_pinned_and_a_missing_one_is_one_line(published: str, tmp_path: Path) -> None:
    root = detect(URL, revision="main")
    assert root is not None and root.commit == published
    with pytest.raises(SourceError) as err:
        detect(f"{URL}@v9.9")
    assert "no revision `v9.9`" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SourceError, match="give the revision once"):
        detect(f"{URL}@main", revision="main")


def test_wrong_key_from_the_hub_writes_nothing(published: str, tmp_path: Path) -> None:
    from pydantic import SecretStr

    from lmsynth.errors import PassphraseError

    root = detect(URL)
    assert root is not None
    with pytest.raises(PassphraseError, match="does not decrypt dataset/lmsys-chat-1m-first-turn-user-instructions"):
        recover_original(
            root,
            subsets=None,
            source=str(write_source(tmp_path / "lmsys.jsonl")),
            out_dir=tmp_path / "r",
            passphrase=SecretStr("wrong"),
        )
    assert not (tmp_path / "r").exists()


def test_a_hub_repo_in_another_layout_is_refused(hf_hub: HubState) -> None:
    api = HfApi()
    api.create_repo("org/other", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"# x\n", path_in_repo="README.md", repo_id="org/other", repo_type="dataset")
    with pytest.raises(SourceError, match="not the original release layout: no dataset/lmsys-chat-1m-first-turn"):
        detect("hf://datasets/org/other")
