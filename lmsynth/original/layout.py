"""The files of the original release, as its public pages name them, and how to find them (folder or Hub)."""

from __future__ import annotations

from pathlib import Path

from lmsynth.errors import SourceError
from lmsynth.release.inputs import RunInput, as_input, exists, resolve_input


GATED_DIR = "dataset"
GATED_DEFAULT = f"{GATED_DIR}/lmsys-chat-1m-first-turn-user-instructions-ja.jsonl.gz.gpg"
GATED_UNSAFE = f"{GATED_DIR}/lmsys-chat-1m-first-turn-user-instructions-ja+unsafe.jsonl.gz.gpg"

# `--subset` → the public file of that generation; the first name is the current one, the others earlier ones.
SUBSET_FILES: dict[str, tuple[str, ...]] = {
    "llama3.1": ("llama3.1-lmsys-chat-1m-synth-ja+en.jsonl.gz", "lmsys-chat-1m-synth-ja+en-llama-3.1.jsonl.gz"),
    "gemma2": ("gemma2-lmsys-chat-1m-synth-ja+en.jsonl.gz",),
    "gemma3": ("gemma3-lmsys-chat-1m-synth-ja+en.jsonl.gz",),
}
# lmsynth's own config names for the same generations.
ALIASES = {"llama-3.1": "llama3.1", "gemma-2": "gemma2", "gemma-3": "gemma3"}
# The release version each generation was published as (the card of an export names it).
VERSIONS = {"llama3.1": "v0.1", "gemma2": "v0.3", "gemma3": "v0.5"}
# Where a public file may sit: beside the JA instructions, or at the repo's root.
FOLDERS = (GATED_DIR, "")
HUB_PREFIX = "hf://datasets/"


def detect(uri: str, *, revision: str | None = None) -> RunInput | None:
    """The root of an original release at `uri`, or None when `uri` is not one (a lmsynth release).

    A local folder is the original layout when it holds `GATED_DEFAULT`; an `hf://datasets/ORG/NAME[@REV]`
    URL is read as the original layout, pinned to the commit its revision names now.

    Raises:
        SourceError: a Hub URL that cannot be read, or whose files are not this layout.
    """
    if uri.startswith(HUB_PREFIX):
        url = uri.rstrip("/")
        if revision:
            if "@" in url:
                raise SourceError(uri, f"give the revision once: in the URL (@REV) or --revision {revision}")
            url += f"@{revision}"
        root = resolve_input(url)
        if not exists(root.child(GATED_DEFAULT)):
            raise SourceError(uri, f"not the original release layout: no {GATED_DEFAULT}")
        return root
    if "://" in uri:
        return None
    path = Path(uri).expanduser()
    if not (path / GATED_DEFAULT).is_file():
        return None
    if revision:
        raise SourceError(
            uri, f"a local copy has no revisions: drop --revision {revision} (or read {HUB_PREFIX}...@REV)"
        )
    return as_input(path)


def canonical_subset(name: str) -> str:
    """`--subset` as a key of SUBSET_FILES (lmsynth's own names accepted)."""
    key = ALIASES.get(name, name)
    if key not in SUBSET_FILES:
        known = ", ".join(SUBSET_FILES)
        raise SourceError(name, f"unknown subset of the original release; choose one of {known}")
    return key


def subset_file(root: RunInput, subset: str) -> RunInput | None:
    """The public file of `subset` in the release, or None."""
    for folder in FOLDERS:
        for name in SUBSET_FILES[subset]:
            inp = root.child(f"{folder}/{name}" if folder else name)
            if exists(inp):
                return inp
    return None


def present_subsets(root: RunInput) -> list[str]:
    """The subsets whose public file the release holds."""
    return [s for s in SUBSET_FILES if subset_file(root, s) is not None]
