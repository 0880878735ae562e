"""A small stand-in for the Hub's HTTP API, so the real huggingface_hub client code runs up to the
network: whoami, create repo, preupload, commit (files inline), list models, repository info and
file tree (what snapshot_download reads), and file download."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

TOKEN = "hf_fake_token_for_tests_0123456789"


class FakeHub:
    """Holds repositories as {repo_id: {path: bytes}}; `fail_next` makes the next N writes answer 503."""

    def __init__(self, user: str = "tester", orgs: tuple[str, ...] = ("compot-zoo",)) -> None:
        self.user, self.orgs = user, orgs
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []
        self.fail_next = 0
        self.validated: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                hub._handle(self, "GET")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

            def do_POST(self):
                hub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    def _reply(self, h, status: int, body: object = None, headers: dict | None = None, head: bool = False) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def _handle(self, h, method: str) -> None:  # noqa: C901 - one branch per Hub endpoint the tests fake
        url = urlparse(h.path)
        path = unquote(url.path)
        self.requests.append((method, path))
        self.authorizations.append(h.headers.get("Authorization", ""))
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        authorized = h.headers.get("Authorization") == f"Bearer {TOKEN}"
        if method == "POST" and self.fail_next:
            self.fail_next -= 1
            return self._reply(h, 503, {"error": "Service Unavailable"})
        if path == "/api/whoami-v2":
            if not authorized:
                return self._reply(h, 401, {"error": "Invalid credentials in Authorization header"})
            return self._reply(h, 200, {"type": "user", "name": self.user, "orgs": [{"name": o} for o in self.orgs]})
        if path == "/api/repos/create" and method == "POST":
            if not authorized:
                return self._reply(h, 401, {"error": "Unauthorized"})
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            self.repos.setdefault(repo_id, {})
            return self._reply(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":  # the real Hub checks the card's metadata against its schema
            self.validated.append(json.loads(body)["content"])
            return self._reply(h, 200, {"errors": [], "warnings": []})
        if path.startswith("/api/models/") and "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._reply(
                h, 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if path.startswith("/api/models/") and "/commit/" in path:
            if not authorized:
                return self._reply(h, 401, {"error": "Unauthorized"})
            repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
            for line in body.decode().splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    self.repos[repo_id][op["value"]["path"]] = base64.b64decode(op["value"]["content"])
                elif op["key"] == "deletedFile":
                    self.repos[repo_id].pop(op["value"]["path"], None)
            oid = hashlib.sha1(body).hexdigest()
            return self._reply(h, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid})
        if path == "/api/models" and method == "GET":
            author = parse_qs(url.query).get("author", [""])[0]
            return self._reply(
                h,
                200,
                [{"id": r, "modelId": r, "private": False} for r in sorted(self.repos) if r.startswith(f"{author}/")],
            )
        for route in ("/revision/", "/tree/"):
            if path.startswith("/api/models/") and route in path and method == "GET":
                repo_id = path.removeprefix("/api/models/").partition(route)[0]
                files = self.repos.get(repo_id)
                if files is None:
                    return self._reply(h, 404, {"error": "RepoNotFound"}, {"X-Error-Code": "RepoNotFound"})
                if route == "/revision/":
                    siblings = [{"rfilename": name} for name in sorted(files)]
                    return self._reply(h, 200, {"id": repo_id, "sha": "0" * 40, "siblings": siblings, "private": False})
                tree = [
                    {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                    for name, data in sorted(files.items())
                ]
                return self._reply(h, 200, tree)
        if "/resolve/" in path:
            repo_id, _, rest = path.lstrip("/").partition("/resolve/")
            file = rest.partition("/")[2]
            content = self.repos.get(repo_id, {}).get(file)
            if content is None:
                code = "EntryNotFound" if repo_id in self.repos else "RepoNotFound"
                return self._reply(h, 404, {"error": code}, {"X-Error-Code": code}, head=method == "HEAD")
            etag = hashlib.sha1(content).hexdigest()
            return self._reply(h, 200, content, {"ETag": f'"{etag}"', "X-Repo-Commit": "0" * 40}, head=method == "HEAD")
        return self._reply(h, 404, {"error": f"no route {method} {path}"})
