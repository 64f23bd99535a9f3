"""A local ModelScope stand-in for the dataset routes the real `modelscope` client (modelscope-hub) uses.

Answers use ModelScope's envelope `{"Code", "Data", "Message", "RequestId", "Success"}`. Repos keep
commits (full trees of sha256-addressed blobs on disk), the `master` branch and tags; faults can be
injected per route and every request is logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests.hub.handler import RESET, DispatchingHandler, StandInServer


@dataclass
class MsRepo:
    owner: str
    name: str
    visibility: int
    license: str
    commits: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)  # oid -> path -> (sha, size)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> dict[str, tuple[str, int]] | None:
        oid = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        return self.commits.get(oid) if oid else None


class MsState:
    """Stored repos and blobs, the request log, injected faults and the accepted tokens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.repos: dict[str, MsRepo] = {}
            self.blobs: set[str] = set()
            self.requests: list[tuple[str, str]] = []
            self.faults: list[list] = []
            self.tokens: set[str] | None = None

    def inject(self, route: str, status: int, *, times: int = 1, path: str | None = None) -> None:
        """Answer `status` to the next `times` requests of `route` (create, lfs, upload, commit, tag, tree, file).

        `path`: only requests whose file path (`FilePath=`) ends with it. `status` RESET (0) resets the connection.
        """
        with self.lock:
            self.faults.append([route, status, times, path])

    def require_tokens(self, *tokens: str) -> None:
        self.tokens = set(tokens)

    def repo(self, repo_id: str) -> MsRepo:
        return self.repos[repo_id]

    def commits_on(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits)

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / sha
        if not path.exists():
            path.write_bytes(data)
        self.blobs.add(sha)
        return sha

    def take_fault(self, route: str, path: str = "") -> int | None:
        with self.lock:
            for fault in self.faults:
                if fault[0] in (route, "any") and fault[2] > 0 and (fault[3] is None or path.endswith(fault[3])):
                    fault[2] -= 1
                    return fault[1]
        return None


class MsStandIn(StandInServer):
    """The ModelScope stand-in server."""

    state_type = MsState
    prefix = "ms-standin-"

    def __init__(self, *, root: Path | None = None, sock: socket.socket | None = None) -> None:
        super().__init__(_Handler, root=root, sock=sock)


# Private helpers

_REPO = r"(?P<o>[^/]+)/(?P<n>[^/]+)"


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class _Handler(DispatchingHandler):
    state: MsState
    endpoint: str

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.is_head = method == "HEAD"
        self.query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        st = self.state
        with st.lock:
            st.requests.append((method, path))
        table = [
            ("POST", r"^/api/v1/datasets$", "create", self._create),
            ("POST", rf"^/api/v1/repos/datasets/{_REPO}/info/lfs/objects/batch$", "lfs", self._lfs_batch),
            ("PUT", r"^/upload/(?P<oid>[0-9a-f]{64})$", "upload", self._upload),
            ("POST", rf"^/api/v1/repos/datasets/{_REPO}/commit/(?P<rev>[^/]+)$", "commit", self._commit),
            ("POST", rf"^/api/v1/datasets/{_REPO}/repo/tag$", "tag", self._tag),
            ("GET", rf"^/api/v1/datasets/{_REPO}/revisions$", "revisions", self._revisions),
            ("GET", rf"^/api/v1/datasets/{_REPO}/repo/tree$", "tree", self._tree),
            ("GET", rf"^/api/v1/datasets/{_REPO}/repo$", "file", self._file),
            ("HEAD", rf"^/api/v1/datasets/{_REPO}/repo$", "file", self._file),
            ("GET", rf"^/api/v1/datasets/{_REPO}$", "info", self._info),
        ]
        for meth, pattern, route, fn in table:
            if meth == method and (m := re.match(pattern, path)):
                status = st.take_fault(route, "/" + self.query.get("FilePath", "").lstrip("/"))
                if status == RESET:
                    return self._reset()
                if status is not None:
                    return self._reply(None, status=status, message="Injected fault")
                if method in ("POST", "PUT") and route != "upload" and not self._authorized():
                    return self._reply(None, status=401, message="Invalid token")
                return fn(m.groupdict(), body)
        self._reply(None, status=404, message=f"no route {method} {path}")

    # Plumbing -----------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        if self.state.tokens is None:
            return True
        return self.headers.get("Authorization", "").removeprefix("Bearer ") in self.state.tokens

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self.is_head:
            self.wfile.write(body)

    def _reply(self, data: object, *, status: int = 200, message: str = "success") -> None:
        ok = status < 400
        body = {"Code": 200 if ok else status, "Data": data, "Message": message, "RequestId": "standin", "Success": ok}
        self._send(status, json.dumps(body).encode(), "application/json")

    def _repo(self, g: dict) -> MsRepo | None:
        repo = self.state.repos.get(f"{g['o']}/{g['n']}")
        if repo is None:
            self._reply(None, status=404, message="dataset not found")
        return repo

    # Routes ---------------------------------------------------------------------------------------

    def _create(self, g: dict, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
            form = {p.get_param("name", header="content-disposition"): p.get_content() for p in msg.iter_parts()}
        elif ctype.startswith("application/json"):
            form = json.loads(body)
        else:
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        form = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in form.items()}
        repo_id = f"{form['Owner']}/{form['Name']}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._reply(None, status=409, message=f"dataset {repo_id} already exists")
            repo = MsRepo(form["Owner"], form["Name"], int(form.get("Visibility") or 1), str(form.get("License", "")))
            repo.commits["init"] = {}
            repo.branches["master"] = "init"
            self.state.repos[repo_id] = repo
        self._reply({"Id": len(self.state.repos), "Name": repo_id})

    def _info(self, g: dict, body: bytes) -> None:
        if (repo := self._repo(g)) is None:
            return
        self._reply({"Id": 1, "Name": repo.name, "Namespace": repo.owner, "Type": 0, "Visibility": repo.visibility})

    def _lfs_batch(self, g: dict, body: bytes) -> None:
        if self._repo(g) is None:
            return
        objects = []
        for obj in json.loads(body)["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.blobs:
                item["actions"] = {"upload": {"href": f"{self.endpoint}/upload/{obj['oid']}", "header": {}}}
                objects.append(item)
        self._send(200, json.dumps({"objects": objects}).encode(), "application/json")

    def _upload(self, g: dict, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != g["oid"]:
            return self._reply(None, status=400, message="sha256 mismatch")
        with self.state.lock:
            self.state.put(body)
        self._send(200, b"", "text/plain")

    def _commit(self, g: dict, body: bytes) -> None:
        with self.state.lock:
            if (repo := self._repo(g)) is None:
                return
            rev = unquote(g["rev"])
            head = repo.branches.get(rev)
            if head is None:
                return self._reply(None, status=404, message=f"revision {rev} not found")
            files = dict(repo.commits[head])
            for action in json.loads(body).get("actions", []):
                path = action.get("path")
                if action.get("action") == "delete":
                    files.pop(path, None)
                    continue
                if action.get("type") == "lfs":
                    sha = action["sha256"]
                    if sha not in self.state.blobs:
                        return self._reply(None, status=400, message=f"object {sha} was never uploaded")
                    files[path] = (sha, int(action["size"]))
                else:
                    data = base64.b64decode(action.get("content", ""))
                    files[path] = (self.state.put(data), len(data))
            oid = hashlib.sha1(f"{head}|{time.time_ns()}|{len(repo.commits)}".encode()).hexdigest()
            repo.commits[oid] = files
            repo.branches[rev] = oid
        self._reply({"CommitId": oid, "Revision": oid})

    def _tag(self, g: dict, body: bytes) -> None:
        with self.state.lock:
            if (repo := self._repo(g)) is None:
                return
            data = json.loads(body)
            ref = data.get("Ref") or "master"
            oid = repo.branches.get(ref) or repo.tags.get(ref) or (ref if ref in repo.commits else None)
            if oid is None:
                return self._reply(None, status=404, message=f"revision {ref} not found")
            if data["TagName"] in repo.tags:
                return self._reply(None, status=409, message=f"tag {data['TagName']} already exists")
            repo.tags[data["TagName"]] = oid
        self._reply({"TagName": data["TagName"], "Revision": oid})

    def _revisions(self, g: dict, body: bytes) -> None:
        if (repo := self._repo(g)) is None:
            return
        # What the SDK documents and reads: `Revision` and `CreatedAt` (no commit id).
        tags = [{"Revision": t, "CreatedAt": 1767225600} for t in sorted(repo.tags)]
        branches = [{"Revision": b, "CreatedAt": 1767225600} for b in sorted(repo.branches)]
        self._reply({"RevisionMap": {"Tags": tags, "Branches": branches}})

    def _tree(self, g: dict, body: bytes) -> None:
        if (repo := self._repo(g)) is None:
            return
        files = repo.resolve(self.query.get("Revision") or "master")
        if files is None:
            return self._reply(None, status=404, message="revision not found")
        # Folders are listed too (`Type: "tree"`), as ModelScope does and as the SDK's own download skips them.
        folders = sorted({f for p in files for f in _parents(p)})
        entries = [{"Path": f, "Name": f.rsplit("/", 1)[-1], "Type": "tree", "Size": 0} for f in folders]
        entries += [
            {"Path": p, "Name": p.rsplit("/", 1)[-1], "Type": "blob", "Size": size, "Sha256": sha, "IsLFS": True}
            for p, (sha, size) in sorted(files.items())
        ]
        page, size = int(self.query.get("PageNumber", 1)), int(self.query.get("PageSize", 100))
        chunk = entries[(page - 1) * size : page * size]
        self._reply({"Files": chunk, "TotalCount": len(entries)})

    def _file(self, g: dict, body: bytes) -> None:
        if (repo := self._repo(g)) is None:
            return
        files = repo.resolve(self.query.get("Revision") or "master")
        entry = files.get(self.query.get("FilePath", "").lstrip("/")) if files is not None else None
        if entry is None:
            return self._reply(None, status=404, message="file not found")
        self._send(200, (self.state.root / entry[0]).read_bytes(), "application/octet-stream")
