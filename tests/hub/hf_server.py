"""A local Hugging Face Hub stand-in that speaks the routes the real `huggingface_hub` and `datasets` use.

Repos hold commits (each a full tree: path → content-addressed blob), branches and tags, like git. Blobs
live on disk under `root`, named by sha256, so a 200 MB release does not sit in memory. Faults can be
injected per route (`inject("commit", 500, skip=1)` fails the second commit) and every request is logged,
so tests can assert what the server saw.

Run alone for benchmarks: `python -m tests.hub.hf_server --root DIR` prints the endpoint.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests.hub.handler import RESET, DispatchingHandler, StandInServer


GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.gpg filter=lfs diff=lfs merge=lfs -text\n"
LFS_SUFFIXES = (".parquet", ".gpg", ".png", ".arrow", ".gz", ".bin")


@dataclass
class Blob:
    sha256: str
    size: int
    git_oid: str
    lfs: bool


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    gated: str | bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        rev = unquote(rev)
        oid = self.branches.get(rev) or self.tags.get(rev)
        if oid is None:
            oid = next((o for o in self.commits if o == rev or (len(rev) >= 7 and o.startswith(rev))), None)
        return self.commits.get(oid) if oid else None


@dataclass
class Fault:
    route: str
    status: int
    times: int
    skip: int = 0
    path: str | None = None


class HubState:
    """Everything the stand-in stores, plus its request log and injected faults."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.repos: dict[tuple[str, str], Repo] = {}
            self.blobs: dict[str, Blob] = {}
            self.requests: list[tuple[str, str]] = []
            self.faults: list[Fault] = []
            self.commit_calls = 0
            self.tokens: set[str] | None = None
            self.seen_authorization: list[str] = []

    # Fault injection -----------------------------------------------------------------------------

    def inject(self, route: str, status: int, *, times: int = 1, skip: int = 0, path: str | None = None) -> None:
        """Answer `status` to the next `times` requests of `route` after letting `skip` of them through.

        Routes: create, preupload, lfs-batch, lfs-upload, commit, tag, refs, info, tree, resolve, any.
        `path`: only requests whose URL path ends with it (e.g. `/MANIFEST.json`). `status` RESET (0) resets
        the connection instead of answering.
        """
        with self.lock:
            self.faults.append(Fault(route, status, times, skip, path))

    def require_tokens(self, *tokens: str) -> None:
        """From now on, writes need `Authorization: Bearer <one of tokens>`."""
        self.tokens = set(tokens)

    def commits_on(self, repo_id: str, repo_type: str = "dataset") -> int:
        """How many commits the repo holds (the creation commit included)."""
        return len(self.repos[(repo_type, repo_id)].commits)

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    # Storage -------------------------------------------------------------------------------------

    def put_blob(self, data: bytes, *, lfs: bool) -> Blob:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / sha
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        blob = Blob(sha, len(data), _git_oid(data), lfs)
        self.blobs[sha] = blob
        return blob

    def blob_path(self, blob: Blob) -> Path:
        return self.root / blob.sha256

    def new_commit(self, repo: Repo, parent: str | None, title: str, files: dict[str, Blob]) -> Commit:
        seed = f"{repo.repo_id}|{parent}|{title}|{time.time_ns()}|{len(repo.commits)}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent, title, files)
        repo.commits[oid] = commit
        return commit

    def _take_fault(self, route: str, path: str = "") -> int | None:
        with self.lock:
            for fault in self.faults:
                if fault.route not in (route, "any") or fault.times <= 0:
                    continue
                if fault.path is not None and not path.endswith(fault.path):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                return fault.status
        return None


class HubStandIn(StandInServer):
    """The HF Hub stand-in server."""

    state_type = HubState
    prefix = "hf-standin-"

    def __init__(self, *, root: Path | None = None, sock: socket.socket | None = None) -> None:
        super().__init__(_Handler, root=root, sock=sock)


# Private helpers

_API = re.compile(r"^/api/(?P<kind>models|datasets|spaces)/(?P<org>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?$")
_RESOLVE = re.compile(
    r"^/(?:(?P<kind>datasets|spaces)/)?(?P<org>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)
_LFS_BATCH = re.compile(
    r"^/(?:(?P<kind>datasets|spaces)/)?(?P<org>[^/]+)/(?P<name>[^/.]+)\.git/info/lfs/objects/batch$"
)


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(DispatchingHandler):
    state: HubState
    endpoint: str

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.is_head = method == "HEAD"
        self.query = parse_qs(url.query)
        path = url.path
        body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
        st = self.state
        with st.lock:
            st.requests.append((method, path))
            auth = self.headers.get("Authorization")
            if auth:
                st.seen_authorization.append(auth)
        route, handler = self._route(method, path)
        status = st._take_fault(route, path)
        if status == RESET:
            return self._reset()
        if status is not None:
            return self._error(status, "Injected fault", retry_after=status == 429)
        if handler is None:
            return self._error(404, f"no route {method} {path}")
        if method in ("POST", "PUT", "DELETE") and route != "lfs-upload" and not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        try:
            handler(body)
        except BrokenPipeError:
            pass

    def _route(self, method: str, path: str):  # noqa: C901 — one flat routing table
        if path == "/_standin/stats":
            return "stats", lambda body: self._json(
                {"/".join(k): len(r.commits) - 1 for k, r in self.state.repos.items()}  # minus the creation commit
            )
        if path == "/api/whoami-v2":
            return "whoami", self._whoami
        if path == "/api/repos/create" and method == "POST":
            return "create", self._create_repo
        if path == "/api/repos/delete" and method == "DELETE":
            return "delete", self._delete_repo
        if path == "/api/validate-yaml":
            return "validate", lambda body: self._json({})
        if path.startswith("/lfs-upload/") and method == "PUT":
            return "lfs-upload", lambda body: self._lfs_put(path.rsplit("/", 1)[1], body)
        if m := _LFS_BATCH.match(path):
            return "lfs-batch", lambda body: self._lfs_batch(m, body)
        if m := _RESOLVE.match(path):
            return "resolve", lambda body: self._resolve(m, method)
        m = _API.match(path)
        if not m:
            return "any", None
        kind, repo_id, rest = m["kind"][:-1], f"{m['org']}/{m['name']}", m["rest"] or ""
        table = [
            ("GET", r"^$", "info", lambda b, g: self._info(kind, repo_id, "main")),
            ("GET", r"^/revision/(?P<rev>.+)$", "info", lambda b, g: self._info(kind, repo_id, g["rev"])),
            ("GET", r"^/refs$", "refs", lambda b, g: self._refs(kind, repo_id)),
            ("GET", r"^/tree/(?P<rev>[^/]+)(?:/(?P<p>.*))?$", "tree", lambda b, g: self._tree(kind, repo_id, g)),
            ("POST", r"^/paths-info/(?P<rev>[^/]+)$", "tree", lambda b, g: self._paths_info(kind, repo_id, g, b)),
            ("POST", r"^/preupload/(?P<rev>[^/]+)$", "preupload", lambda b, g: self._preupload(kind, repo_id, g, b)),
            ("POST", r"^/commit/(?P<rev>[^/]+)$", "commit", lambda b, g: self._commit(kind, repo_id, g["rev"], b)),
            ("POST", r"^/tag/(?P<rev>[^/]+)$", "tag", lambda b, g: self._tag(kind, repo_id, g["rev"], b)),
            ("DELETE", r"^/tag/(?P<tag>[^/]+)$", "tag", lambda b, g: self._delete_tag(kind, repo_id, g["tag"])),
            ("POST", r"^/branch/(?P<b>[^/]+)$", "branch", lambda b, g: self._branch(kind, repo_id, g["b"], b)),
            ("PUT", r"^/settings$", "settings", lambda b, g: self._settings(kind, repo_id, b)),
        ]
        for meth, pattern, name, fn in table:
            if method in (meth, "HEAD" if meth == "GET" else meth) and (g := re.match(pattern, rest)):
                return name, (lambda body, fn=fn, g=g: fn(body, g.groupdict()))
        return "any", None

    # Plumbing -----------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        if self.state.tokens is None:
            return True
        auth = self.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ") in self.state.tokens

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self.is_head:
            self.wfile.write(body)

    def _json(self, data: object, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(
        self, status: int, message: str, *, code: str | None = None, retry_after: bool = False, **extra: object
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if retry_after:
            headers["Retry-After"] = "0"
        self._send(status, json.dumps({"error": message, **extra}).encode(), headers)

    def _repo(self, kind: str, repo_id: str) -> Repo | None:
        repo = self.state.repos.get((kind, repo_id))
        if repo is None:
            self._error(404, "Repository not found", code="RepoNotFound")
        elif repo.private and not self._can_read():
            # Like the Hub: a private repo is indistinguishable from a missing one without a valid token.
            self._error(401, "Repository not found", code="RepoNotFound")
            return None
        return repo

    def _can_read(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and (self.state.tokens is None or self._authorized())

    def _commit_at(self, repo: Repo, rev: str) -> Commit | None:
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, f"Invalid rev id: {unquote(rev)}", code="RevisionNotFound")
        return commit

    def _entry(self, path: str, blob: Blob) -> dict:
        entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": 134}
        return entry

    # Routes ---------------------------------------------------------------------------------------

    def _whoami(self, body: bytes) -> None:
        if self.state.tokens is not None and not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        self._json(
            {"type": "user", "name": "tester", "fullname": "Tester", "orgs": [], "auth": {"type": "access_token"}}
        )

    def _create_repo(self, body: bytes) -> None:
        data = json.loads(body or b"{}")
        kind = data.get("type") or "model"
        repo_id = f"{data.get('organization') or 'tester'}/{data['name']}"
        st = self.state
        prefix = "" if kind == "model" else f"{kind}s/"
        with st.lock:
            if (kind, repo_id) in st.repos:
                return self._error(409, "You already created this repo", url=f"{self.endpoint}/{prefix}{repo_id}")
            repo = Repo(kind, repo_id, private=bool(data.get("private") or data.get("visibility") == "private"))
            init = st.new_commit(
                repo, None, "initial commit", {".gitattributes": st.put_blob(GITATTRIBUTES, lfs=False)}
            )
            repo.branches["main"] = init.oid
            st.repos[(kind, repo_id)] = repo
        self._json({"url": f"{self.endpoint}/{prefix}{repo_id}", "name": repo_id, "id": repo_id})

    def _delete_repo(self, body: bytes) -> None:
        data = json.loads(body or b"{}")
        key = (data.get("type") or "model", f"{data.get('organization') or 'tester'}/{data['name']}")
        with self.state.lock:
            self.state.repos.pop(key, None)
        self._json({})

    def _info(self, kind: str, repo_id: str, rev: str) -> None:
        if (repo := self._repo(kind, repo_id)) is None or (commit := self._commit_at(repo, rev)) is None:
            return
        self._json(
            {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "gated": repo.gated,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                "cardData": {},
            }
        )

    def _refs(self, kind: str, repo_id: str) -> None:
        if (repo := self._repo(kind, repo_id)) is None:
            return

        def refs(items: dict[str, str], prefix: str) -> list[dict]:
            return [{"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": o} for n, o in sorted(items.items())]

        self._json(
            {
                "branches": refs(repo.branches, "heads"),
                "tags": refs(repo.tags, "tags"),
                "converts": [],
                "pullRequests": [],
            }
        )

    def _tree(self, kind: str, repo_id: str, g: dict) -> None:
        if (repo := self._repo(kind, repo_id)) is None or (commit := self._commit_at(repo, g["rev"])) is None:
            return
        base = unquote(g.get("p") or "").strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{base}/" if base else ""
        under = {p: b for p, b in commit.files.items() if p.startswith(prefix)}
        if base and not under:
            return self._error(404, "Entry not found", code="EntryNotFound")
        entries: dict[str, dict] = {}
        for path, blob in sorted(under.items()):
            rel = path[len(prefix) :].split("/")
            for depth in range(1, len(rel)):
                folder = prefix + "/".join(rel[:depth])
                if recursive or depth == 1:
                    oid = hashlib.sha1(folder.encode()).hexdigest()
                    entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(rel) == 1:
                entries[path] = self._entry(path, blob)
        self._json(list(entries.values()))

    def _paths_info(self, kind: str, repo_id: str, g: dict, body: bytes) -> None:
        if (repo := self._repo(kind, repo_id)) is None or (commit := self._commit_at(repo, g["rev"])) is None:
            return
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.files:
                out.append(self._entry(p, commit.files[p]))
            elif any(f.startswith(p + "/") for f in commit.files):
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        self._json(out)

    def _preupload(self, kind: str, repo_id: str, g: dict, body: bytes) -> None:
        if (repo := self._repo(kind, repo_id)) is None:
            return
        commit = repo.resolve(g["rev"])
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 1 << 20 or b"\0" in sample
            existing = commit.files.get(f["path"]) if commit else None
            oid = (existing.sha256 if existing.lfs else existing.git_oid) if existing else None
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json({"files": files, "commitOid": commit.oid if commit else None})

    def _lfs_batch(self, m: re.Match, body: bytes) -> None:
        kind = (m["kind"] or "models")[:-1]
        if self._repo(kind, f"{m['org']}/{m['name']}") is None:
            return
        objects = []
        for obj in json.loads(body)["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.blobs:
                item["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects})

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "sha256 mismatch")
        with self.state.lock:
            self.state.put_blob(body, lfs=True)
        self._send(200, b"")

    def _commit(self, kind: str, repo_id: str, rev: str, body: bytes) -> None:
        st = self.state
        with st.lock:
            st.commit_calls += 1
            if (repo := self._repo(kind, repo_id)) is None:
                return
            branch = unquote(rev)
            head = repo.branches.get(branch)
            if head is None:
                return self._error(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(item["value"] for item in lines if item["key"] == "header")
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                return self._error(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head].files)
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    files[value["path"]] = st.put_blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    blob = st.blobs.get(value["oid"])
                    if blob is None:
                        return self._error(422, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = Blob(blob.sha256, blob.size, blob.git_oid, True)
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        return self._error(404, "A file with this name doesn't exist", code="EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            commit = st.new_commit(repo, head, header.get("summary", ""), files)
            repo.branches[branch] = commit.oid
        prefix = "" if kind == "model" else f"{kind}s/"
        url = f"{self.endpoint}/{prefix}{repo_id}/commit/{commit.oid}"
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def _tag(self, kind: str, repo_id: str, rev: str, body: bytes) -> None:
        with self.state.lock:
            if (repo := self._repo(kind, repo_id)) is None or (commit := self._commit_at(repo, rev)) is None:
                return
            tag = json.loads(body)["tag"]
            if tag in repo.tags:
                return self._error(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.oid
        self._json({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.oid})

    def _delete_tag(self, kind: str, repo_id: str, tag: str) -> None:
        with self.state.lock:
            if (repo := self._repo(kind, repo_id)) is None:
                return
            if repo.tags.pop(unquote(tag), None) is None:
                return self._error(404, "Tag not found", code="RevisionNotFound")
        self._json({})

    def _branch(self, kind: str, repo_id: str, name: str, body: bytes) -> None:
        with self.state.lock:
            if (repo := self._repo(kind, repo_id)) is None:
                return
            start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
            if (commit := self._commit_at(repo, start)) is None:
                return
            if unquote(name) in repo.branches:
                return self._error(409, "Branch already exists")
            repo.branches[unquote(name)] = commit.oid
        self._json({})

    def _settings(self, kind: str, repo_id: str, body: bytes) -> None:
        with self.state.lock:
            if (repo := self._repo(kind, repo_id)) is None:
                return
            data = json.loads(body or b"{}")
            if "gated" in data:
                repo.gated = data["gated"]
            if "private" in data:
                repo.private = bool(data["private"])
            if "visibility" in data:
                repo.private = data["visibility"] == "private"
        self._json({})

    def _resolve(self, m: re.Match, method: str) -> None:
        kind = (m["kind"] or "models")[:-1]
        if (repo := self._repo(kind, f"{m['org']}/{m['name']}")) is None:
            return
        if (commit := self._commit_at(repo, m["rev"])) is None:
            return
        path = unquote(m["path"])
        blob = commit.files.get(path)
        if blob is None:
            return self._error(404, "Entry not found", code="EntryNotFound")
        etag = blob.sha256 if blob.lfs else blob.git_oid
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(blob.size)
        data = self.state.blob_path(blob).read_bytes() if method == "GET" else b""
        status = 200
        if (rng := self.headers.get("Range")) and method == "GET":
            start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
            start = int(start_s or 0)
            end = min(int(end_s) if end_s else blob.size - 1, blob.size - 1)
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        if method == "HEAD":
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(blob.size))
            self.end_headers()
            return
        self._send(status, data, headers)


def main() -> None:
    """Serve until interrupted; print the endpoint on the first line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()
    server = HubStandIn(root=args.root)
    print(server.endpoint, flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
