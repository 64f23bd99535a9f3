"""A re-release on a flaky network: transient failures are retried and the re-release is a no-op; failures that
outlast the retries are one honest line, exit 1, nothing published, and never the advice to `--force`.

The published release is read three ways before anything is written (its MANIFEST.json, the gated ciphertexts
it may reuse, the tag's MANIFEST.json inside the publish), then the commit. Each is failed here with a 5xx, a
429 or a connection reset, on the HF Hub stand-in and on the ModelScope stand-in.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmsynth.cli import main
from tests.hub.handler import RESET
from tests.hub.hf_server import HubState
from tests.hub.ms_server import MsState
from tests.release.conftest import PASSPHRASE


pytestmark = pytest.mark.hub
HF_REPO, MS_REPO = "org/flaky", "org/flaky"
MANIFEST = "/MANIFEST.json"
GATED = "-instructions-ja.jsonl.gz.gpg"
FOREVER = 1000


@pytest.fixture(autouse=True)
def no_client_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub retries 5xx/429/resets itself (1+2+4+8+8 s) inside each of lmsynth's tries: skip its waits."""
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda s: None, time=time.time))
    # The ModelScope client does the same per file download (up to 60 s per wait).
    from modelscope_hub import _download

    monkeypatch.setattr(_download, "DOWNLOAD_RETRY_MAX_DELAY_SECONDS", 0)


def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """`lmsynth ARGS` in this process (the stand-ins live here); (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lmsynth", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def release(small_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):  # noqa: ANN201
    """`release(uri)`: `lmsynth release v0.5 --to URI` of the small project; (exit code, stdout, stderr)."""
    key = small_project / "key.txt"
    key.write_text(PASSPHRASE + "\n", encoding="utf-8")
    args = ["release", "v0.5", "--manifest", str(small_project / "v0.5.yaml"), "--passphrase-file", str(key)]
    return lambda uri: _cli([*args, "--to", uri], monkeypatch, capsys)


def _assert_honest_failure(code: int, err: str, *, uri: str, expect: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert code == 1, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"Error: {uri}: "), lines[0]
    assert expect in lines[0], lines[0]
    assert "--force" not in err and "already exists" not in err, err
    assert "Traceback" not in err


HF_READS = [
    pytest.param("resolve", 503, MANIFEST, "HTTP 503", id="manifest-503"),
    pytest.param("resolve", 429, MANIFEST, "HTTP 429", id="manifest-429"),
    pytest.param("resolve", RESET, MANIFEST, "unreachable", id="manifest-reset"),
    pytest.param("resolve", 502, GATED, "HTTP 502", id="ciphertext-502"),
    pytest.param("resolve", RESET, GATED, "unreachable", id="ciphertext-reset"),
]


class TestHfHub:
    @pytest.mark.parametrize(("route", "status", "path", "expect"), HF_READS)
    def test_transient_read_failures_are_retried_and_the_rerelease_is_a_no_op(
        self, release, hf_hub: HubState, route: str, status: int, path: str, expect: str
    ) -> None:
        code, _, err = release(f"hf://{HF_REPO}")
        assert code == 0, err
        commits = hf_hub.commits_on(HF_REPO)
        hf_hub.inject(route, status, times=2, path=path)
        code, out, err = release(f"hf://{HF_REPO}")
        assert code == 0, err
        assert "Unchanged v0.5" in out
        assert hf_hub.commits_on(HF_REPO) == commits
        assert not [f for f in hf_hub.faults if f.times], "the faults were not reached"

    @pytest.mark.parametrize(("route", "status", "path", "expect"), HF_READS)
    def test_persistent_read_failures_are_one_honest_line_and_publish_nothing(
        self, release, hf_hub: HubState, route: str, status: int, path: str, expect: str
    ) -> None:
        code, _, err = release(f"hf://{HF_REPO}")
        assert code == 0, err
        commits, tags = hf_hub.commits_on(HF_REPO), dict(hf_hub.repo(HF_REPO).tags)
        hf_hub.inject(route, status, times=FOREVER, path=path)
        code, _, err = release(f"hf://{HF_REPO}")
        _assert_honest_failure(code, err, uri=f"hf://{HF_REPO}", expect=expect)
        assert path.strip("/") in err or path in err  # the file it could not read
        assert hf_hub.commits_on(HF_REPO) == commits and hf_hub.repo(HF_REPO).tags == tags

    @pytest.mark.parametrize("status", [500, 429, RESET], ids=["500", "429", "reset"])
    def test_commit_failures(self, release, hf_hub: HubState, status: int) -> None:
        hf_hub.inject("commit", status, times=2)
        code, out, err = release(f"hf://{HF_REPO}")
        assert code == 0 and "Released v0.5" in out, err
        assert hf_hub.commits_on(HF_REPO) == 2  # the repo's first commit and the release: never two releases
        hf_hub.reset()
        hf_hub.inject("commit", status, times=FOREVER)
        code, _, err = release(f"hf://{HF_REPO}")
        _assert_honest_failure(code, err, uri=f"hf://{HF_REPO}", expect="commit the release")
        assert "v0.5" not in hf_hub.repo(HF_REPO).tags


MS_READS = [
    pytest.param(503, MANIFEST, "HTTP 503", id="manifest-503"),
    pytest.param(429, MANIFEST, "HTTP 429", id="manifest-429"),
    pytest.param(RESET, MANIFEST, "unreachable", id="manifest-reset"),
    pytest.param(500, GATED, "HTTP 500", id="ciphertext-500"),
]


class TestModelScope:
    @pytest.mark.parametrize(("status", "path", "expect"), MS_READS)
    def test_read_failures(self, release, ms_hub: MsState, status: int, path: str, expect: str) -> None:
        code, _, err = release(f"ms://{MS_REPO}")
        assert code == 0, err
        commits = ms_hub.commits_on(MS_REPO)
        ms_hub.inject("file", status, times=2, path=path)
        code, out, err = release(f"ms://{MS_REPO}")
        assert code == 0 and "Unchanged v0.5" in out, err
        assert ms_hub.commits_on(MS_REPO) == commits
        assert not [f for f in ms_hub.faults if f[2]], "the faults were not reached"
        ms_hub.inject("file", status, times=FOREVER, path=path)
        code, _, err = release(f"ms://{MS_REPO}")
        _assert_honest_failure(code, err, uri=f"ms://{MS_REPO}", expect=expect)
        assert ms_hub.commits_on(MS_REPO) == commits

    def test_commit_failures(self, release, ms_hub: MsState) -> None:
        ms_hub.inject("commit", 503, times=2)
        code, out, err = release(f"ms://{MS_REPO}")
        assert code == 0 and "Released v0.5" in out, err
        ms_hub.reset()
        ms_hub.inject("commit", 503, times=FOREVER)
        code, _, err = release(f"ms://{MS_REPO}")
        _assert_honest_failure(code, err, uri=f"ms://{MS_REPO}", expect="HTTP 503")
        assert "v0.5" not in ms_hub.repo(MS_REPO).tags
