"""A local HTTP server that speaks the part of the Hugging Face hub protocol `pull-weights` uses.

It follows huggingface_hub 0.36 (file_download.py, hf_api.model_info, utils/_http.py
hf_raise_for_status) and the hub's observable answers:

    GET  /api/models/{repo}/revision/{rev}?blobs=True   repo info: commit sha, siblings with size,
                                                        blobId and, for LFS files, lfs.sha256
    HEAD /{repo}/resolve/{rev}/{file}                   regular file: 200, ETag = git blob sha1;
                                                        LFS file: 302 to the CDN, X-Linked-Etag =
                                                        sha256, X-Linked-Size; X-Repo-Commit always
    GET  /{repo}/resolve/{rev}/{file}                   same headers, with the body (regular file)
    GET  /cdn/{sha256}                                  LFS content, honours `Range: bytes=N-`

Failures carry the hub's X-Error-Code: RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo
(401 without a token, 403 with one not granted access), and 401 "Invalid credentials in
Authorization header" for unknown tokens. Fault injection for tests: `cut_after` (drop the
connection after N bytes, once), `corrupt` (serve bytes that do not match the advertised hash),
`advertised_size` (claim a size, e.g. larger than any disk), `unresolvable` (listed, yet 404).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the hub uses as ETag for files not stored in LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """One model repo at one commit. Files whose name does not end in .json are stored in LFS."""

    files: dict[str, bytes]
    gated: bool = False
    commit: str = field(default_factory=lambda: secrets.token_hex(20))
    branches: tuple[str, ...] = ("main",)

    def is_lfs(self, name: str) -> bool:
        return not name.endswith(".json")

    def etag(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(name) else git_blob_sha1(data)

    def lfs_pointer(self, name: str) -> bytes:
        """The small text git stores in place of an LFS file."""
        sha256 = self.etag(name)
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(self.files[name])}\n".encode()


@dataclass
class Request:
    """What the server saw: enough to assert on resume and auth."""

    method: str
    path: str
    range: str | None
    authorization: str | None


class FakeHub:
    """A threaded hub on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.valid_tokens: set[str] = set()
        self.granted_tokens: set[str] = set()  # tokens whose owner accepted the gated repos' license
        self.cut_after: dict[str, int] = {}  # file name -> bytes sent before the connection drops (once)
        self.corrupt: set[str] = set()
        self.advertised_size: dict[str, int] = {}
        self.unresolvable: set[str] = set()  # listed by the API, yet 404 EntryNotFound on resolve
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def content_requests(self, name: str) -> list[Request]:
        """GETs that transferred the bytes of `name` (CDN for LFS files, resolve otherwise)."""
        out = []
        for repo in self.repos.values():
            if name not in repo.files:
                continue
            target = f"/cdn/{repo.etag(name)}" if repo.is_lfs(name) else f"/resolve/{repo.commit}/{name}"
            out += [r for r in self.requests if r.method == "GET" and r.path.endswith(target)]
        return out

    def size_of(self, repo: FakeRepo, name: str) -> int:
        return self.advertised_size.get(name, len(repo.files[name]))

    def find_blob(self, sha256: str) -> tuple[FakeRepo, str] | None:
        for repo in self.repos.values():
            for name in repo.files:
                if repo.is_lfs(name) and repo.etag(name) == sha256:
                    return repo, name
        return None


_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the hub; every answer carries Content-Length

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr
        pass

    def do_HEAD(self) -> None:
        self._handle(body=False)

    def do_GET(self) -> None:
        self._handle(body=True)

    # -- routing -----------------------------------------------------------------------------

    def _handle(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.log(Request(self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
        if m := _CDN.match(path):
            return self._cdn(m["sha"], body)
        token = self._token()
        if token is not None and token not in self.hub.valid_tokens:
            return self._error(401, None, INVALID_CREDENTIALS)
        if m := _API.match(path):
            return self._api(m["repo"], m["rev"], token)
        if m := _RESOLVE.match(path):
            return self._resolve(m["repo"], m["rev"], m["file"], token, body)
        self._error(404, None, "Not found")

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization")
        return auth.removeprefix("Bearer ").strip() if auth else None

    def _repo(self, repo_id: str, rev: str) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if rev not in (*repo.branches, repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo

    def _api(self, repo_id: str, rev: str, token: str | None) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        siblings = []
        for name, data in repo.files.items():
            size = self.hub.size_of(repo, name)
            sibling: dict[str, object] = {"rfilename": name, "size": size, "blobId": git_blob_sha1(data)}
            if repo.is_lfs(name):
                pointer = repo.lfs_pointer(name)
                sibling["blobId"] = git_blob_sha1(pointer)  # git holds the pointer, LFS the bytes
                sibling["lfs"] = {"sha256": repo.etag(name), "size": size, "pointerSize": len(pointer)}
            siblings.append(sibling)
        info = {
            "_id": repo.commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "siblings": siblings,
        }
        self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode())

    def _resolve(self, repo_id: str, rev: str, name: str, token: str | None, body: bool) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        if repo.gated and token is None:
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must be authenticated.")
        if repo.gated and token not in self.hub.granted_tokens:
            message = f"Access to model {repo_id} is restricted and you are not in the authorized list."
            return self._error(403, "GatedRepo", message)
        commit_header = {"X-Repo-Commit": repo.commit}
        if name not in repo.files or name in self.hub.unresolvable:
            return self._error(404, "EntryNotFound", f"{name} does not exist on {rev}", commit_header)
        etag = repo.etag(name)
        if repo.is_lfs(name):
            headers = {
                **commit_header,
                "ETag": f'"{git_blob_sha1(repo.lfs_pointer(name))}"',
                "X-Linked-Etag": f'"{etag}"',
                "X-Linked-Size": str(self.hub.size_of(repo, name)),
                "Location": f"{self.hub.url}/cdn/{etag}",
            }
            return self._send(302, headers, b"")
        self._send(200, {**commit_header, "ETag": f'"{etag}"'}, self._content(name, repo.files[name]), body=body)

    def _cdn(self, sha256: str, body: bool) -> None:
        found = self.hub.find_blob(sha256)
        if found is None:
            return self._send(404, {}, b"no such blob")
        repo, name = found
        data = self._content(name, repo.files[name])
        start = 0
        if (range_header := self.headers.get("Range")) is not None:
            m = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
            if m is None or int(m[1]) >= len(data):
                return self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"")
            start = int(m[1])
        payload = data[start:]
        headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        cut = self.hub.cut_after.pop(name, None) if body else None
        if cut is not None:
            return self._send_cut(status, headers, payload, cut)
        self._send(status, headers, payload, body=body)

    def _content(self, name: str, data: bytes) -> bytes:
        if name in self.hub.corrupt:
            return bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    # -- answers -----------------------------------------------------------------------------

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code is not None:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _send(self, status: int, headers: dict[str, str], payload: bytes, body: bool = True) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(payload)

    def _send_cut(self, status: int, headers: dict[str, str], payload: bytes, n_bytes: int) -> None:
        """Promise the whole payload, send `n_bytes` of it, then drop the connection."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[:n_bytes])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)
