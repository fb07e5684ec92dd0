"""A stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints huggingface_hub's
snapshot_download calls (model info with its file list, HEAD/GET of resolve/<rev>/<file>), serving
local folders as repos. Gated and missing repos answer as the Hub does (401/403 + X-Error-Code)."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repos: dict[str, Path], gated: tuple[str, ...] = ()) -> None:
        self.repos, self.gated = repos, set(gated)
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _send(self, code: int, data: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(code)
                for k, v in {"Content-Length": str(len(data)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, code: int, error_code: str, msg: str, body: bool) -> None:
                data = json.dumps({"error": msg}).encode()
                self._send(code, data, {"X-Error-Code": error_code, "X-Error-Message": msg,
                                        "Content-Type": "application/json"}, body)

            def _serve(self, body: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo = "/".join(parts[2:4])
                    folder = self._repo(repo, body)
                    if folder is None:
                        return
                    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                    if len(parts) > 4 and parts[4] == "tree":  # the file list: path, size, blob id
                        tree = []
                        for f in files:
                            data = (folder / f).read_bytes()
                            tree.append({"type": "file", "path": f, "size": len(data),
                                         "oid": hashlib.sha1(data).hexdigest()})
                        self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
                        return
                    info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "gated": False,
                            "siblings": [{"rfilename": f} for f in files]}
                    self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
                    return
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, fname = "/".join(parts[:2]), "/".join(parts[4:])
                    folder = self._repo(repo, body)
                    if folder is None:
                        return
                    f = folder / fname
                    if not f.is_file():
                        self._error(404, "EntryNotFound", "Entry not found", body)
                        return
                    data = f.read_bytes()
                    etag = hashlib.sha256(data).hexdigest() if f.suffix == ".safetensors" else hashlib.sha1(data).hexdigest()
                    self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"',
                                           "Content-Type": "application/octet-stream"}, body)
                    return
                self._error(404, "RepoNotFound", "Not found", body)

            def _repo(self, repo: str, body: bool) -> Path | None:
                if repo in hub.gated:
                    self._error(403, "GatedRepo", f"Access to model {repo} is restricted.", body)
                    return None
                if repo not in hub.repos:
                    self._error(401, "RepoNotFound", "Repository not found", body)
                    return None
                return hub.repos[repo]

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
