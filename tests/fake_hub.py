"""A small stand-in for the Hub's HTTP API, so the real huggingface_hub client code runs up to the
network, answering as the Hub does where our code depends on it:

- `whoami-v2` with the token's role (`auth.accessToken.role`: read, write or fineGrained with its
  scopes) and the user's `roleInOrg` in each organisation;
- create repo: 401/403 for a token or a user that cannot write to the namespace, 409 "You already
  created this model repo" (with its url) for a name taken, `private` / `visibility` recorded, a
  `.gitattributes` in the new repository as the Hub writes one;
- preupload: "lfs" for what the Hub stores in LFS (binary content, over 10 MB, or a path the
  repository's .gitattributes tracks: safetensors, PNG), then the LFS batch, PUT and verify
  steps; a commit carrying a binary file inline is refused (400) as on the Hub;
- card metadata checked on validate-yaml and on commit by huggingface_hub's own model-index parser
  and the Hub's published rules (license ids, base_model ids, base_model_relation);
- planned failures (`fail`): 400/403/409/429/503 with the Hub's error bodies and headers (X-Error-Code,
  X-Error-Message, RateLimit);
- list models, repository info and file tree (what snapshot_download reads), file download.

The Xet upload protocol is not faked: the fixture turns it off (HF_HUB_DISABLE_XET) so huggingface_hub
takes the LFS path."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

TOKEN = "hf_fake_token_for_tests_0123456789"
GITATTRIBUTES = "*.bin filter=lfs\n*.pt filter=lfs\n*.safetensors filter=lfs\n*.png filter=lfs\n*.zip filter=lfs\n"
LFS_OVER = 10 * 2**20  # the Hub stores files over 10 MB in LFS whatever their type
# The Hub's license identifiers (hub-docs, docs/hub/repositories-licenses.md).
LICENSES = set(
    "apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m "
    "afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 "
    "cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 "
    "cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 "
    "cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 "
    "gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl "
    "apple-amlr mpl-2.0 odc-by odbl openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl "
    "lgpl-lr deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 "
    "llama4 grok2-community gemma unknown other".split()
)
BASE_MODEL_RELATIONS = {"adapter", "merge", "quantized", "finetune"}  # hub-docs, model-cards.md
WRITE_ROLES = {"admin", "write", "contributor"}

# What the Hub answers with each error status: its JSON body and headers.
ERRORS: dict[int, tuple[str, dict[str, str]]] = {
    400: ("Bad request", {}),
    401: ("Invalid credentials in Authorization header", {}),
    403: ("You don't have the rights to create a model under the namespace", {}),
    404: ("Repository not found", {"X-Error-Code": "RepoNotFound"}),
    409: ("You already created this model repo", {}),
    429: (
        "You have exceeded our hourly quotas for action 'api'. We invite you to retry later.",
        {"RateLimit": '"api";r=0;t={reset}', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'},
    ),
    503: ("Service Unavailable", {}),
}


def card_errors(content: str) -> list[str]:
    """What the Hub's validate-yaml reports for a README.md: huggingface_hub's own model-index and
    eval-results checks (ModelCardData) and the Hub's rules on license and base model."""
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        data = ModelCard(content, ignore_metadata_errors=False).data.to_dict()
    except (ValueError, yaml.YAMLError) as exc:
        return [str(exc).splitlines()[0]]
    errors = []
    if data.get("license") is not None and data["license"] not in LICENSES:
        errors.append(f'"license" must be one of the Hub\'s license identifiers, not {data["license"]!r}')
    if data.get("base_model_relation") is not None and data["base_model_relation"] not in BASE_MODEL_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {sorted(BASE_MODEL_RELATIONS)}')
    bases = data.get("base_model") or []
    for base in [bases] if isinstance(bases, str) else bases:
        try:
            validate_repo_id(base)
        except HFValidationError:
            errors.append(f'"base_model" must be a model id, not {base!r}')
    if not all(isinstance(t, str) for t in data.get("tags") or []):
        errors.append('"tags" must be a list of strings')
    return errors


def is_binary(sample: bytes) -> bool:
    """The Hub's test on the first bytes of a file: a NUL byte, or bytes that are not UTF-8."""
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in sample


class FakeHub:
    """Holds repositories as {repo_id: {path: bytes}}. The token's role is `token_role` ("write",
    "read" or "fineGrained" with `scopes`); the user's role in each organisation is `orgs[org]`."""

    def __init__(self, user: str = "tester", orgs: dict[str, str] | None = None) -> None:
        self.user = user
        self.orgs = {"compot-zoo": "write"} if orgs is None else orgs
        self.token_role = "write"
        self.scopes: list[dict] = []  # fine-grained: [{"entity": {"type", "name"}, "permissions": [...]}]
        self.rate_limit_reset = 0  # seconds, in the RateLimit header of a 429
        self.repos: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.lfs_paths: dict[str, set[str]] = {}  # repo -> paths stored in LFS
        self.objects: dict[str, bytes] = {}  # LFS storage by sha256
        self.planned: list[tuple[str, int]] = []
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []
        self.validated: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop answering and close the socket: a request after this cannot connect."""
        self.server.shutdown()
        self.server.server_close()

    def fail(self, route: str, status: int, times: int = 1) -> None:
        """The next `times` requests to `route` (whoami, create, repo, preupload, lfs-batch, lfs-upload,
        commit, validate-yaml) answer `status` with the Hub's body for it."""
        self.planned += [(route, status)] * times

    # -- answers -------------------------------------------------------------------------------

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

    def _error(self, h, status: int, message: str | None = None, head: bool = False, **extra) -> None:
        """An error as the Hub sends it: {"error": ...} and the X-Error-Message header."""
        default, headers = ERRORS.get(status, ("Error", {}))
        message = message or default
        headers = {k: v.format(reset=self.rate_limit_reset) for k, v in headers.items()}
        self._reply(h, status, {"error": message, **extra}, {"X-Error-Message": message, **headers}, head=head)

    def _planned(self, route: str) -> int | None:
        for i, (planned_route, status) in enumerate(self.planned):
            if planned_route == route:
                del self.planned[i]
                return status
        return None

    def _can_write(self, namespace: str) -> bool:
        """What the Hub allows a token: its role, its fine-grained scopes, the user's role in the org."""
        if self.token_role == "read":
            return False
        if self.token_role == "fineGrained" and not any(
            s["entity"]["name"] == namespace and "repo.write" in s["permissions"] for s in self.scopes
        ):
            return False
        return namespace == self.user or self.orgs.get(namespace) in WRITE_ROLES

    def _whoami(self) -> dict:
        token = {"displayName": "tests", "role": self.token_role}
        if self.token_role == "fineGrained":
            token["fineGrained"] = {"scoped": self.scopes, "global": []}
        orgs = [{"type": "org", "name": o, "roleInOrg": role} for o, role in self.orgs.items()]
        return {"type": "user", "name": self.user, "orgs": orgs, "auth": {"type": "access_token", "accessToken": token}}

    # -- routes ----------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> tuple[str, Callable] | None:
        """The route name and its handler for a request; None when the fake has no such endpoint."""
        models = path.startswith("/api/models/")
        table = [
            ("whoami", path == "/api/whoami-v2", self._on_whoami),
            ("create", path == "/api/repos/create" and method == "POST", self._on_create),
            ("validate-yaml", path == "/api/validate-yaml", self._on_validate),
            ("preupload", models and "/preupload/" in path, self._on_preupload),
            ("commit", models and "/commit/" in path, self._on_commit),
            ("lfs-batch", path.endswith(".git/info/lfs/objects/batch"), self._on_lfs_batch),
            ("lfs-upload", path.startswith("/lfs-storage/"), self._on_lfs_upload),
            ("lfs-verify", path.startswith("/lfs-verify/"), self._on_lfs_verify),
            ("list", path == "/api/models" and method == "GET", self._on_list),
            ("tree", models and "/tree/" in path and method == "GET", self._on_tree),
            ("repo", models and method == "GET", self._on_repo),
            ("resolve", "/resolve/" in path, self._on_resolve),
        ]
        return next(((name, handler) for name, hit, handler in table if hit), None)

    def _handle(self, h, method: str) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        self.requests.append((method, path))
        self.authorizations.append(h.headers.get("Authorization", ""))
        body = _read_body(h) if method in ("POST", "PUT") else b""
        found = self._route(method, path)
        if found is None:
            return self._reply(h, 404, {"error": f"no route {method} {path}"})
        name, handler = found
        status = self._planned(name)
        if status is not None:
            return self._error(h, status, head=method == "HEAD")
        authorized = h.headers.get("Authorization") == f"Bearer {TOKEN}"
        return handler(h, method, path, url.query, body, authorized)

    def _on_whoami(self, h, method, path, query, body, authorized) -> None:
        if not authorized:
            return self._error(h, 401)
        return self._reply(h, 200, self._whoami())

    def _on_create(self, h, method, path, query, body, authorized) -> None:
        if not authorized:
            return self._error(h, 401)
        data = json.loads(body)
        namespace = data.get("organization") or self.user
        repo_id = f"{namespace}/{data['name']}"
        if not self._can_write(namespace):
            message = f'You don\'t have the rights to create a model under the namespace "{namespace}"'
            return self._error(h, 403, message)
        if repo_id in self.repos:
            return self._error(h, 409, url=f"{self.url}/{repo_id}")
        self.repos[repo_id] = {".gitattributes": GITATTRIBUTES.encode()}
        self.lfs_paths[repo_id] = set()
        self.private[repo_id] = data.get("visibility") == "private" or bool(data.get("private"))
        return self._reply(h, 200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _on_validate(self, h, method, path, query, body, authorized) -> None:
        content = json.loads(body)["content"]
        self.validated.append(content)
        errors = card_errors(content)
        if errors:
            return self._reply(h, 400, {"errors": [{"message": e} for e in errors], "warnings": []})
        return self._reply(h, 200, {"errors": [], "warnings": []})

    def _lfs_tracked(self, repo_id: str, path: str, size: int, sample: bytes) -> bool:
        patterns = [
            line.split()[0]
            for line in self.repos.get(repo_id, {}).get(".gitattributes", b"").decode().splitlines()
            if "filter=lfs" in line
        ]
        return size > LFS_OVER or is_binary(sample) or any(fnmatch.fnmatch(path, p) for p in patterns)

    def _on_preupload(self, h, method, path, query, body, authorized) -> None:
        repo_id = path.removeprefix("/api/models/").split("/preupload/")[0]
        files = json.loads(body)["files"]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "lfs"
                if self._lfs_tracked(repo_id, f["path"], f["size"], base64.b64decode(f["sample"]))
                else "regular",
                "shouldIgnore": False,
            }
            for f in files
        ]
        return self._reply(h, 200, {"files": modes})

    def _on_lfs_batch(self, h, method, path, query, body, authorized) -> None:
        repo_id = path.lstrip("/").removesuffix(".git/info/lfs/objects/batch")
        if not authorized or not self._can_write(repo_id.split("/")[0]):
            return self._error(h, 403, f"You don't have write access to {repo_id}")
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.objects:  # the Hub asks only for what it does not hold yet
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-storage/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/lfs-verify/{obj['oid']}"},
                }
            objects.append(entry)
        return self._reply(h, 200, {"transfer": "basic", "objects": objects})

    def _on_lfs_upload(self, h, method, path, query, body, authorized) -> None:
        oid = path.removeprefix("/lfs-storage/")
        if hashlib.sha256(body).hexdigest() != oid:
            return self._error(h, 400, "content does not match its sha256")
        self.objects[oid] = body
        return self._reply(h, 200, b"")

    def _on_lfs_verify(self, h, method, path, query, body, authorized) -> None:
        data = json.loads(body)
        if len(self.objects.get(data["oid"], b"")) != data["size"]:
            return self._error(h, 404, "Object not found")
        return self._reply(h, 200, {})

    def _apply(self, repo_id: str, op: dict) -> str | None:
        """One commit operation applied; the Hub's reason to refuse it, if any."""
        files, value = self.repos[repo_id], op["value"]
        if op["key"] == "file":
            content = base64.b64decode(value["content"])
            if is_binary(content[:512]):
                return "Your push was rejected because it contains binary files. Please use LFS to store them."
            files[value["path"]] = content
            self.lfs_paths[repo_id].discard(value["path"])
        elif op["key"] == "lfsFile":
            if value["oid"] not in self.objects:
                return f"LFS object {value['oid']} was never uploaded"
            files[value["path"]] = self.objects[value["oid"]]
            self.lfs_paths[repo_id].add(value["path"])
        elif op["key"] == "deletedFile":
            files.pop(value["path"], None)
        return None

    def _on_commit(self, h, method, path, query, body, authorized) -> None:
        repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
        if not authorized:
            return self._error(h, 401)
        if repo_id not in self.repos:
            return self._error(h, 404)
        if not self._can_write(repo_id.split("/")[0]):
            return self._error(h, 403, f"You don't have write access to {repo_id}")
        ops = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        card = next((op for op in ops if op["key"] == "file" and op["value"]["path"] == "README.md"), None)
        errors = card_errors(base64.b64decode(card["value"]["content"]).decode()) if card else []
        if errors:
            return self._error(h, 400, "Invalid metadata in README.md.\n- " + "\n- ".join(errors))
        saved = dict(self.repos[repo_id]), set(self.lfs_paths[repo_id])
        for op in ops[1:]:
            refused = self._apply(repo_id, op)
            if refused:
                self.repos[repo_id], self.lfs_paths[repo_id] = saved  # a commit is all or nothing
                return self._error(h, 400, refused)
        oid = hashlib.sha1(body).hexdigest()
        return self._reply(h, 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid})

    def _on_list(self, h, method, path, query, body, authorized) -> None:
        author = parse_qs(query).get("author", [""])[0]
        listed = [
            {"id": r, "modelId": r, "private": self.private.get(r, False)}
            for r in sorted(self.repos)
            if r.startswith(f"{author}/") and (authorized or not self.private.get(r, False))
        ]
        return self._reply(h, 200, listed)

    def _visible(self, repo_id: str, authorized: bool) -> dict[str, bytes] | None:
        """A repository's files, None when it is missing or private to an anonymous reader (the Hub's 404)."""
        if self.private.get(repo_id) and not authorized:
            return None
        return self.repos.get(repo_id)

    def _on_repo(self, h, method, path, query, body, authorized) -> None:
        repo_id = path.removeprefix("/api/models/").partition("/revision/")[0]
        files = self._visible(repo_id, authorized)
        if files is None:
            return self._error(h, 404)
        siblings = [{"rfilename": name} for name in sorted(files)]
        info = {"id": repo_id, "sha": "0" * 40, "siblings": siblings, "private": self.private.get(repo_id, False)}
        return self._reply(h, 200, info)

    def _on_tree(self, h, method, path, query, body, authorized) -> None:
        repo_id = path.removeprefix("/api/models/").partition("/tree/")[0]
        files = self._visible(repo_id, authorized)
        if files is None:
            return self._error(h, 404)
        tree = []
        for name, data in sorted(files.items()):
            entry = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
            if name in self.lfs_paths.get(repo_id, ()):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            tree.append(entry)
        return self._reply(h, 200, tree)

    def _on_resolve(self, h, method, path, query, body, authorized) -> None:
        repo_id, _, rest = path.lstrip("/").partition("/resolve/")
        file = rest.partition("/")[2]
        files = self._visible(repo_id, authorized)
        content = (files or {}).get(file)
        head = method == "HEAD"
        if content is None:
            code = "EntryNotFound" if files is not None else "RepoNotFound"
            return self._reply(h, 404, {"error": code}, {"X-Error-Code": code}, head=head)
        headers = {"X-Repo-Commit": "0" * 40, "ETag": f'"{hashlib.sha1(content).hexdigest()}"'}
        if file in self.lfs_paths.get(repo_id, ()):  # an LFS file's etag is its sha256, as on the Hub
            sha = hashlib.sha256(content).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(content))})
        return self._reply(h, 200, content, headers, head=head)


def _read_body(h) -> bytes:
    """A request's body, sent with a Content-Length or chunked (as httpx sends a file object)."""
    if h.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))
    chunks = []
    while True:
        size = int(h.rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
            h.rfile.readline()
            return b"".join(chunks)
        chunks.append(h.rfile.read(size))
        h.rfile.readline()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            hub._handle(self, "GET")

        def do_HEAD(self):
            hub._handle(self, "HEAD")

        def do_POST(self):
            hub._handle(self, "POST")

        def do_PUT(self):
            hub._handle(self, "PUT")

    return Handler
