"""A release built from run folders staged in a private dataset repo (`--runs hf://datasets/...`), read as streams."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from lmsynth.errors import MissingRunsError, SourceError
from lmsynth.release.build import build_release
from lmsynth.tree import layout
from tests.hub.hf_server import HubState
from tests.release.conftest import N, Project


pytestmark = pytest.mark.hub
RUNS_REPO = "org/lmsynth-runs"
RUNS_URL = f"hf://datasets/{RUNS_REPO}"


def stage_runs(project: Project) -> str:
    """Stage the project's `runs/` in a private dataset repo with the README's `hf upload`; return the commit sha."""
    hf = Path(sys.executable).parent / "hf"
    cmd = [str(hf), "upload", RUNS_REPO, "runs", "runs", "--repo-type", "dataset", "--private"]
    res = subprocess.run(cmd, cwd=project.root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    info = HfApi().dataset_info(RUNS_REPO)
    assert info.private
    return info.sha


def _dry_run(project: Project, out: Path, **kw: object):  # noqa: ANN202
    return build_release(
        "v0.5",
        manifest_path=project.manifest,
        target="hf://org/lmsys-synth",
        passphrase=project.passphrase,
        dry_run=True,
        out_dir=out,
        **kw,
    )


def _manifest(tree: Path) -> dict:
    return json.loads((tree / layout.MANIFEST_FILE).read_text(encoding="utf-8"))


def test_release_from_staged_runs_equals_the_local_one_and_names_its_commit(
    project: Project, hf_hub: HubState, tmp_path: Path
) -> None:
    local = _dry_run(project, tmp_path / "local")
    sha = stage_runs(project)
    shutil.rmtree(project.root / "runs")  # a fresh checkout: nothing but the staged runs

    with pytest.raises(MissingRunsError) as err:
        _dry_run(project, tmp_path / "nothing")
    msg = str(err.value)
    assert "\n" not in msg and set(err.value.subsets) == {"llama-3.1", "gemma-2", "gemma-3"}
    assert (
        "`lmsynth run pipelines/gemma-3.yaml --input runs/prepared --out runs/gemma-3`" in msg
        and "--runs hf://" in msg
        and "lmsynth demo" in msg
    )

    hub = _dry_run(project, tmp_path / "hub", runs_root=f"{RUNS_URL}@main")
    assert hub.counts == local.counts and all(c.records == N for c in hub.counts.values())
    m_hub, m_local = _manifest(tmp_path / "hub"), _manifest(tmp_path / "local")
    # Public files are byte-identical whichever way the runs were read.
    for path, entry in m_local["files"].items():
        if path.startswith(layout.DATA_DIR + "/"):
            assert m_hub["files"][path]["sha256"] == entry["sha256"], path
    inputs = m_hub["subsets"]["gemma-3"]["inputs"]
    assert inputs["records"] == {"url": f"{RUNS_URL}@main/runs/gemma-3", "commit": sha}
    assert inputs["prepared"] == {"url": f"{RUNS_URL}@main/runs/prepared", "commit": sha}
    assert m_local["subsets"]["gemma-3"]["inputs"]["records"] == {"url": "runs/gemma-3", "commit": None}
    # Streamed: nothing of the runs went into the local Hub cache, and the files were read over HTTP.
    assert not list(Path(os.environ["HF_HOME"]).rglob("*.jsonl*"))
    assert any(m == "GET" and "/resolve/" in p and p.endswith(".jsonl") for m, p in hf_hub.requests)


def test_records_override_by_url(project: Project, hf_hub: HubState, tmp_path: Path) -> None:
    stage_runs(project)
    shutil.rmtree(project.runs("gemma-3"))
    url = f"{RUNS_URL}/runs/gemma-3"  # no revision: main
    res = _dry_run(project, tmp_path / "t", records_overrides={"gemma-3": url})
    assert res.counts["gemma-3"].records == N
    assert _manifest(tmp_path / "t")["subsets"]["gemma-3"]["inputs"]["records"]["url"] == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"{RUNS_URL}@main/runs/nowhere", "no such file or folder"),
        (f"{RUNS_URL}@no-such-branch/runs/gemma-3", "no revision `no-such-branch`"),
        ("hf://datasets/org/no-such-repo/runs/gemma-3", "no access"),
    ],
)
def test_unreadable_urls_are_one_line_naming_the_url(
    project: Project, hf_hub: HubState, tmp_path: Path, url: str, expected: str
) -> None:
    stage_runs(project)
    with pytest.raises(SourceError) as err:
        _dry_run(project, tmp_path / "t", records_overrides={"gemma-3": url})
    assert str(err.value).startswith(url + ": ") and expected in str(err.value) and "\n" not in str(err.value)


def test_private_runs_need_the_token(
    project: Project, hf_hub: HubState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage_runs(project)
    hf_hub.require_tokens("hf_test_write_token_123456")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_987654")
    with pytest.raises(SourceError) as err:
        _dry_run(project, tmp_path / "t", runs_root=f"{RUNS_URL}@main")
    assert "no access" in str(err.value) and "hf_wrong_token_987654" not in str(err.value)
