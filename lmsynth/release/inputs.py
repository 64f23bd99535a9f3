"""Where a release reads its run folders: a local folder or any fsspec URL (`hf://datasets/ORG/NAME@REV/PATH`).

A manifest's `records:` and `prepared:` (and `--records CONFIG=...`) are resolved against the runs root
(`--runs ROOT`, default the current folder) unless they are URLs or absolute paths themselves. A Hub URL is
pinned to the commit its revision points at when it is resolved, so that every file is read at that one
commit and MANIFEST.json can name it. Files are read as streams (one HTTP response per file on the Hub, never
a full local copy); huggingface_hub's own token resolution applies (`HF_TOKEN`, `hf auth login`). A missing
repo, revision or path, or a repo the token cannot read, is one `SourceError` line naming the URL.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lmsynth.errors import SourceError
from lmsynth.tree.manifest_json import InputRef


HF_URL = re.compile(
    r"^hf://(?:(?P<kind>datasets|spaces|models)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<path>.*))?$"
)
READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class RunInput:
    """A file or folder of run data, local or behind fsspec; `str()` is what errors name."""

    url: str
    path: str
    fs: Any = None  # an fsspec filesystem; None for a local path
    commit: str | None = None
    shown: str | None = None

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The last component of the path."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        """The file name's last suffix (e.g. `.gz`)."""
        return Path(self.name).suffix

    @property
    def ref(self) -> InputRef:
        """What MANIFEST.json records about this input."""
        return InputRef(url=self.shown or self.url, commit=self.commit)

    def child(self, name: str) -> RunInput:
        """The entry `name` inside this folder."""
        if self.fs is None:
            return RunInput(url=str(Path(self.url) / name), path=str(Path(self.path) / name))
        return RunInput(url=f"{self.url.rstrip('/')}/{name}", path=f"{self.path.rstrip('/')}/{name}", fs=self.fs)

    def is_dir(self) -> bool:
        """Whether this is a folder."""
        if self.fs is None:
            return Path(self.path).is_dir()
        return self._remote(lambda: self.fs.isdir(self.path))

    def is_file(self) -> bool:
        """Whether this is a file."""
        if self.fs is None:
            return Path(self.path).is_file()
        return self._remote(lambda: self.fs.isfile(self.path))

    def files(self, pattern: str) -> list[RunInput]:
        """The files of this folder whose names match `pattern`, in name order."""
        if self.fs is None:
            return [self.child(p.name) for p in sorted(Path(self.path).glob(pattern)) if p.is_file()]
        entries = self._remote(lambda: self.fs.ls(self.path, detail=True))
        names = sorted(e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")
        return [self.child(n) for n in names if Path(n).match(pattern)]

    @contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """A binary stream of the file's content (`.gz` decompressed)."""
        if self.fs is None:
            raw: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 — closed below
        else:
            # block_size=0: one streamed response, read as it arrives.
            raw = self._remote(lambda: self.fs.open(self.path, "rb", block_size=0))
            raw = io.BufferedReader(raw, buffer_size=READ_BLOCK) if not isinstance(raw, io.BufferedReader) else raw
        try:
            yield gzip.GzipFile(fileobj=raw, mode="rb") if self.suffix == ".gz" else raw
        finally:
            raw.close()

    def _remote(self, fn):  # noqa: ANN001, ANN202
        try:
            return fn()
        except (FileNotFoundError, PermissionError, OSError, ValueError) as e:
            raise SourceError(self.url, _why(e)) from e


def resolve_input(value: str | Path, *, root: str | Path | None = None) -> RunInput:
    """`value` (a manifest path or URL) as a `RunInput`, relative paths joined to the runs `root`.

    Raises:
        SourceError: a Hub repo, revision or path does not exist or cannot be read with the current token.
    """
    value = str(value)
    root_s = str(root) if root not in (None, "", ".") else None
    if "://" in value:
        url, shown = value, value
    elif Path(value).is_absolute():
        return RunInput(url=value, path=value, shown=Path(value).name)
    elif root_s is not None and "://" in root_s:
        url = f"{root_s.rstrip('/')}/{value.removeprefix('./')}"
        shown = url
    else:
        base = Path(root_s) if root_s else Path()
        return RunInput(url=str(base / value), path=str(base / value), shown=value)
    if url.startswith("file://"):
        local = url.removeprefix("file://")
        return RunInput(url=local, path=local, shown=Path(local).name)
    if url.startswith("hf://"):
        return _resolve_hf(url, shown)
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise SourceError(url, f"cannot open this URL ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return RunInput(url=url, path=path, fs=fs, shown=shown)


def as_input(value: RunInput | Path | str) -> RunInput:
    """A `RunInput` for a local path (or the input itself)."""
    if isinstance(value, RunInput):
        return value
    return RunInput(url=str(value), path=str(value), shown=str(value))


def exists(inp: RunInput) -> bool:
    """Whether the file or folder exists (a Hub error other than 'not found' still raises)."""
    if inp.fs is None:
        return Path(inp.path).exists()
    return inp._remote(lambda: inp.fs.exists(inp.path))


# Private helpers


def _resolve_hf(url: str, shown: str) -> RunInput:
    """Pin `hf://...@REV/PATH` to the commit REV points at now; one-line errors for repo, revision and access."""
    from huggingface_hub import HfApi, HfFileSystem
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    m = HF_URL.match(url)
    if m is None:
        raise SourceError(url, "expected hf://datasets/ORG/NAME[@REVISION]/PATH")
    kind = m["kind"] or "models"
    repo_type = kind[:-1]
    rev = m["rev"] or "main"
    path = (m["path"] or "").strip("/")
    try:
        info = HfApi(library_name="lmsynth").repo_info(m["repo"], repo_type=repo_type, revision=rev)
    except GatedRepoError as e:
        raise SourceError(url, "gated repo: request access on the Hub with the account of your token") from e
    except RevisionNotFoundError as e:
        raise SourceError(url, f"no revision `{rev}` in {kind}/{m['repo']}") from e
    except RepositoryNotFoundError as e:
        raise SourceError(
            url, f"no {repo_type} repo {m['repo']}, or no access to it (a private repo needs a token: HF_TOKEN)"
        ) from e
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", "?")
        raise SourceError(url, f"the Hub answered HTTP {status}") from e
    except OSError as e:
        raise SourceError(url, f"cannot reach the Hub ({type(e).__name__})") from e
    prefix = "" if repo_type == "model" else f"{kind}/"
    fs_path = f"{prefix}{m['repo']}@{info.sha}" + (f"/{path}" if path else "")
    inp = RunInput(url=url, path=fs_path, fs=HfFileSystem(), commit=info.sha, shown=shown)
    if not exists(inp):
        raise SourceError(url, f"no such file or folder at {rev} (commit {info.sha[:12]})")
    return inp


def _why(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, FileNotFoundError):
        return "no such file or folder"
    if isinstance(e, PermissionError):
        return "no access (check the token)"
    return f"cannot read ({type(e).__name__}{': ' + text if text else ''})"
