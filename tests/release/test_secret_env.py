"""No git, gpg or other descendant of `lmsynth release` holds a secret (see tests/test_secrets.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.environ_watch import SECRETS, dump_script, leaks, reads_proc, run_watching, secrets_env


@reads_proc
def test_no_git_gpg_or_other_descendant_of_lmsynth_release_holds_a_secret(small_project: Path) -> None:
    from lmsynth.targets.local import BRANCH

    root = small_project
    bin_dir = root / "bin"
    bin_dir.mkdir()
    dump_script(bin_dir / "gpg", root / "gpg.env", f'exec {subprocess.getoutput("command -v gpg")} "$@"')
    hub = root / "hub"
    subprocess.run(["git", "init", "-q", "-b", BRANCH, str(hub)], check=True)
    dump_script(hub / ".git" / "hooks" / "reference-transaction", root / "git-hook.env", "cat > /dev/null")
    argv = [sys.executable, "-m", "lmsynth", "release", "v0.5", "--manifest", "v0.5.yaml", "--to", "hub"]
    code, output, watch = run_watching(argv, cwd=root, env=secrets_env(root))
    # The command keeps the Hub token for its own Hub client (huggingface_hub reads it from the environment).
    assert leaks(watch.own) == ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
    assert code == 0, output
    for name in ("gpg.env", "git-hook.env"):
        dumps = (root / name).read_bytes().split(b"\n--\n")[:-1]
        assert dumps, f"{name}: never called"
        assert [leaks(d) for d in dumps if leaks(d)] == [], name
    assert watch.seen, "no descendant seen while the release ran"
    # A child caught between fork and exec is still this command's own image (its memory, its command line):
    # what it holds is `own`, checked above. Whatever it execs gets its own environment, checked here.
    assert watch.leaked(besides=" ".join(argv)[:120]) == {}
    # The passphrase still reached gpg (by its stdin): the release decrypts with it.
    from pydantic import SecretStr

    from lmsynth.release.verify import verify

    assert verify("v0.5", target=str(hub), passphrase=SecretStr(SECRETS["LMSYNTH_PASSPHRASE"])).decrypted
