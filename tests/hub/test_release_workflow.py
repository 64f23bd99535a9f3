"""The release workflow's own `run:` commands, in order, against the hub stand-ins holding staged runs.

Each `run:` of the `plan` and `publish` jobs runs in a fresh folder (a checkout without `runs/`), with the
workflow's and the step's `env:`, `${{ … }}` replaced by test values, and `lmsynth` on PATH. Only the install
step is not run (it installs from the package registries): it must be the release-only install. The artifact
upload/download steps carry `$TREE` from one job to the other; here both run in the same folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from tests.hub.hf_server import HubState
from tests.hub.ms_server import MsState
from tests.hub.test_release_from_hub_runs import RUNS_URL, stage_runs
from tests.release.conftest import PASSPHRASE, N, Project


pytestmark = pytest.mark.hub
ROOT = Path(__file__).resolve().parent.parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
HF_REPO = "tokyotech-llm/lmsys-chat-1m-synth"  # release/v0.5.yaml's `hf` target
MS_REPO = "tokyotech-llm/lmsys-chat-1m-synth"
TOKEN = "hf_test_write_token_123456"
EXPRESSIONS = {
    "inputs.version || github.ref_name": "v0.5",
    "env.TREE": "build/release",
    "secrets.LMSYNTH_PASSPHRASE": PASSPHRASE,
    "vars.LMSYNTH_RUNS": f"{RUNS_URL}@main",
    "secrets.HF_RUNS_TOKEN": TOKEN,
    "secrets.HF_TOKEN": TOKEN,
    "vars.HF_OIDC_RESOURCE": "",
    "secrets.MODELSCOPE_API_TOKEN": "ms_test_token_abcdef",
    "vars.PUBLISH_MODELSCOPE == 'true'": "true",
    "github.event_name == 'push' || !inputs.dry-run": "true",
}


def _expand(text: str) -> str:
    def value(m: re.Match) -> str:
        expr = m.group(1).strip()
        assert expr in EXPRESSIONS, f"release.yml uses an expression this test does not know: {expr}"
        return EXPRESSIONS[expr]

    return re.sub(r"\$\{\{(.*?)\}\}", value, str(text))


def _enabled(cond: object) -> bool:
    return cond is None or _expand(cond if "${{" in str(cond) else f"${{{{ {cond} }}}}") == "true"


def _shim(folder: Path) -> Path:
    """A `lmsynth` executable that runs this checkout's package with this interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "lmsynth"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lmsynth "$@"\n', encoding="utf-8")
    exe.chmod(0o755)
    return folder


def test_plan_and_publish_commands_release_from_staged_runs(
    project: Project, hf_hub: HubState, ms_hub: MsState, tmp_path: Path
) -> None:
    stage_runs(project)
    wf = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    checkout = tmp_path / "checkout"  # no runs/ here: only what the staged repo holds
    checkout.mkdir()
    base_env = {
        **os.environ,
        "PATH": f"{_shim(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
    }
    base_env.update({k: _expand(v) for k, v in wf["env"].items()})
    ran: list[str] = []
    for job in ("plan", "publish"):
        assert _enabled(wf["jobs"][job].get("if"))
        for step in wf["jobs"][job]["steps"]:
            if "run" not in step or not _enabled(step.get("if")):
                continue
            if "install" in step["run"]:
                assert step["run"] == "bash scripts/install-release.sh", "the release jobs install release-only"
                continue
            env = {**base_env, **{k: _expand(v) for k, v in (step.get("env") or {}).items()}}
            res = subprocess.run(
                ["bash", "-e", "-c", _expand(step["run"])],
                cwd=checkout,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert res.returncode == 0, f"{job}: {step['name']}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            ran.append(step["run"])
    assert [r.split()[1] for r in ran] == ["release", "publish", "verify", "publish"]

    repo = hf_hub.repo(HF_REPO)
    assert len(repo.commits) == 2  # the repo's creation and ONE release commit
    assert repo.tags["v0.5"] == repo.branches["main"]
    for config in ("llama-3.1", "gemma-2", "gemma-3"):
        ds = datasets.load_dataset(HF_REPO, config, split="train", revision="v0.5", cache_dir=str(tmp_path / "c"))
        assert ds.num_rows == N
    ms = ms_hub.repo(MS_REPO)
    assert ms.tags["v0.5"] == ms.branches["master"]
    # The published MANIFEST.json names the staged runs and the commit they were read at.
    manifest = (checkout / "build" / "release" / "MANIFEST.json").read_text(encoding="utf-8")
    assert f"{RUNS_URL}@main/runs/gemma-3" in manifest and str(tmp_path) not in manifest
