"""A tiny stand-in for Label Studio's media endpoints, on a loopback address (127.0.0.1 unless given; tests).

- GET /data/upload/<name>: the file registered under that path; needs `Authorization: Token <legacy>` or
  `Bearer <access>` (401 otherwise, 404 for unknown files);
- POST /api/token/refresh/ {"refresh": <PAT>} -> {"access": <JWT valid ACCESS_TTL s>}, 401 for another token;
- GET /tasks/<id>/presign/?fileuri=<urlsafe base64>: needs auth, then 302 to `presign_target(uri)`;
- any other registered path is served without auth (a plain media host).
Every request's method, path and Authorization header is recorded in `requests`.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def make_jwt(payload: dict) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.c2lnbmF0dXJl"


PAT = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400, "jti": "pat"})


class FakeLabelStudio:
    """Start with `with FakeLabelStudio() as ls:`; `ls.url` is its base URL."""

    ACCESS_TTL = 300

    def __init__(self, require_auth: bool = True, host: str = "127.0.0.1"):
        self.files: dict[str, bytes] = {}
        self.open_paths: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        self.require_auth = require_auth
        self.access_tokens: set[str] = set()
        self.presign_target = lambda uri: None  # -> absolute URL to redirect to
        self.refresh_count = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes = b"", content_type: str = "application/octet-stream",
                      headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization") or ""
                if auth == f"Token {LEGACY_TOKEN}":
                    return True
                return auth.startswith("Bearer ") and auth[7:] in fake.access_tokens

            def do_GET(self):
                fake.requests.append(("GET", self.path, self.headers.get("Authorization")))
                url = urlparse(self.path)
                if url.path.startswith("/tasks/") and url.path.endswith("/presign/"):
                    if fake.require_auth and not self._authorized():
                        return self._send(401, b'{"detail": "no auth"}', "application/json")
                    uri = base64.urlsafe_b64decode(parse_qs(url.query)["fileuri"][0]).decode()
                    target = fake.presign_target(uri)
                    if target is None:
                        return self._send(404)
                    return self._send(302, headers={"Location": target})
                if self.path in fake.open_paths:
                    return self._send(200, fake.files[self.path])
                if self.path.startswith("/data/") and fake.require_auth and not self._authorized():
                    return self._send(401, b'{"detail": "Authentication credentials were not provided."}',
                                      "application/json")
                if self.path not in fake.files:
                    return self._send(404, b'{"detail": "Not found."}', "application/json")
                return self._send(200, fake.files[self.path])

            def do_POST(self):
                fake.requests.append(("POST", self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/api/token/refresh/":
                    if body.get("refresh") != PAT:
                        return self._send(401, b'{"detail": "Token is invalid"}', "application/json")
                    fake.refresh_count += 1
                    access = make_jwt({"token_type": "access", "exp": int(time.time()) + fake.ACCESS_TTL,
                                       "jti": f"a{fake.refresh_count}"})
                    fake.access_tokens.add(access)
                    return self._send(200, json.dumps({"access": access}).encode(), "application/json")
                return self._send(404)

        assert host.startswith("127."), "tests talk to loopback addresses only"
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, path: str, data: bytes, open_access: bool = False) -> str:
        """Serve `data` at `path`; returns the path."""
        self.files[path] = data
        if open_access:
            self.open_paths.add(path)
        return path

    def __enter__(self) -> FakeLabelStudio:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
