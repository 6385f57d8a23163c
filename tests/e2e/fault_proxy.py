"""A reverse proxy on 127.0.0.1 in front of Label Studio that injects faults (tests of pre-annotation).

`FaultProxy(upstream, rule)`: every request goes through `rule(method, path)`, which answers None (forward it),
"drop" (close the connection without an answer: Label Studio down) or an HTTP status to answer instead
(e.g. 429, with `Retry-After: 1`). Every request is recorded in `log` as (method, path, what was done).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length", "host"}


class FaultProxy:
    def __init__(self, upstream: str, rule: Callable[[str, str], str | int | None]):
        self.upstream = upstream.rstrip("/")
        self.rule = rule
        self.log: list[tuple[str, str, str]] = []
        proxy = self
        session = requests.Session()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = proxy.rule(self.command, self.path)
                proxy.log.append((self.command, self.path, str(action or "forwarded")))
                if action == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(action, int):
                    payload = b'{"detail": "injected fault"}'
                    self.send_response(action)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                r = session.request(self.command, proxy.upstream + self.path, headers=headers, data=body,
                                    allow_redirects=False, timeout=120)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def count(self, what: str) -> int:
        return sum(1 for _, _, done in self.log if done == what)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
