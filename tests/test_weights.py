"""backend/weights.py and scripts/serve.sh: the checkpoint is a local file or fetched, verified, into a cache.

Nothing here leaves the machine: a local http.server on 127.0.0.1 serves a random-weight checkpoint in the
official layout (and broken variants of it), standing in for Hugging Face.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backend import weights
from tests.backend_helpers import write_checkpoint
from tests.live_gunicorn import free_port, serving

ROOT = Path(__file__).resolve().parents[1]
HF_PATH = "/facebook/sam2.1-hiera-tiny/resolve/main/sam2.1_hiera_tiny.pt"


@dataclass
class Route:
    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    send_bytes: int | None = None  # fewer than Content-Length: the connection is cut


class FileServer:
    """http.server on 127.0.0.1 in a thread; `routes` maps a path to what it answers, `hits` counts GETs."""

    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path, Route(b"not found", 404))
                self.send_response(route.status)
                self.send_header("Content-Length", str(len(route.body)))
                for name, value in route.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(route.body[:route.send_bytes])
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> bytes:
    """A small random-weight SAM 2.1-architecture checkpoint, official layout (config stored beside)."""
    return write_checkpoint(tmp_path_factory.mktemp("served") / "model.pt").read_bytes()


@pytest.fixture
def server(checkpoint) -> Iterator[FileServer]:
    server = FileServer()
    server.routes[HF_PATH] = Route(checkpoint)
    yield server
    server.stop()


def _env(server: FileServer, cache: Path, path: str = HF_PATH, **extra: str) -> dict[str, str]:
    return {"SAM2_CHECKPOINT_URL": server.url + path, "SAM2_CACHE_DIR": str(cache), **extra}


def _fails(env: dict[str, str], monkeypatch, capsys, *words: str) -> str:
    """Runs the CLI; asserts exit 1 and one paragraph naming the fix on stderr; returns it."""
    for name in ("SAM2_CHECKPOINT", "SAM2_MODEL", "SAM2_CHECKPOINT_SHA256", "SAM2_CHECKPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert weights.main([]) == 1
    out, err = capsys.readouterr()
    message = err.strip().splitlines()[-1]
    assert out == "" and message.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in message, message
    return message


def _assert_nothing_cached(cache: Path) -> None:
    assert not cache.exists() or list(cache.iterdir()) == []


def test_official_urls():
    assert weights.official_url("sam2.1_hiera_tiny") == (
        "https://huggingface.co/facebook/sam2.1-hiera-tiny/resolve/main/sam2.1_hiera_tiny.pt")
    assert weights.official_url("sam2_hiera_base_plus") == (
        "https://huggingface.co/facebook/sam2-hiera-base-plus/resolve/main/sam2_hiera_base_plus.pt")
    source = weights.Source.from_env({"HOME": "/home/u"})
    assert source.url == weights.official_url("sam2.1_hiera_tiny") and source.model is None
    assert source.path == Path("/home/u/.cache/sam2/sam2.1_hiera_tiny.pt")
    source = weights.Source.from_env({"XDG_CACHE_HOME": "/xdg", "SAM2_MODEL": "sam2.1_hiera_large"})
    assert source.path == Path("/xdg/sam2/sam2.1_hiera_large.pt") and source.url.endswith("/sam2.1_hiera_large.pt")


def test_fetches_once_then_uses_the_cache(server, checkpoint, tmp_path):
    cache = tmp_path / "cache"
    env = _env(server, cache)
    path = weights.resolve(env)
    assert path == cache / "sam2.1_hiera_tiny.pt" and path.read_bytes() == checkpoint
    sha256 = hashlib.sha256(checkpoint).hexdigest()
    assert (cache / "sam2.1_hiera_tiny.pt.sha256").read_text().split() == [sha256, str(len(checkpoint))]
    assert sorted(p.name for p in cache.iterdir()) == ["sam2.1_hiera_tiny.pt", "sam2.1_hiera_tiny.pt.sha256"]
    assert weights.resolve(env) == path and weights.resolve({**env, "SAM2_CHECKPOINT_SHA256": sha256}) == path
    assert server.hits == {HF_PATH: 1}

    # A cached file that no longer matches its sidecar (or an expected sha256) is fetched again.
    path.write_bytes(checkpoint[:100])
    assert weights.resolve(env).read_bytes() == checkpoint and server.hits == {HF_PATH: 2}
    with pytest.raises(weights.WeightsError):
        weights.resolve({**env, "SAM2_CHECKPOINT_SHA256": "0" * 64})
    assert server.hits == {HF_PATH: 3} and path.read_bytes() == checkpoint  # the good file stays


def test_hugging_face_etag_is_checked(server, checkpoint, tmp_path, monkeypatch, capsys):
    """Hugging Face answers the file URL with a redirect carrying X-Linked-Etag: the file's sha256."""
    sha256 = hashlib.sha256(checkpoint).hexdigest()
    server.routes["/redirect.pt"] = Route(b"", 302, {"Location": HF_PATH, "X-Linked-Etag": f'"{sha256}"'})
    assert weights.resolve(_env(server, tmp_path / "a", "/redirect.pt")).read_bytes() == checkpoint

    server.routes["/bad-redirect.pt"] = Route(b"", 302, {"Location": HF_PATH, "X-Linked-Etag": f'"{"1" * 64}"'})
    _fails(_env(server, tmp_path / "b", "/bad-redirect.pt"), monkeypatch, capsys, "sha256", "1" * 64)
    server.routes["/etag.pt"] = Route(checkpoint, headers={"ETag": f'"{"2" * 64}"'})
    _fails(_env(server, tmp_path / "c", "/etag.pt"), monkeypatch, capsys, "sha256", "2" * 64)
    server.routes["/md5-etag.pt"] = Route(checkpoint, headers={"ETag": '"0123456789abcdef0123456789abcdef"'})
    assert weights.resolve(_env(server, tmp_path / "d", "/md5-etag.pt")).read_bytes() == checkpoint
    _assert_nothing_cached(tmp_path / "b")
    _assert_nothing_cached(tmp_path / "c")


@pytest.mark.parametrize("case", ["truncated", "wrong sha256", "not a checkpoint", "404", "unreachable",
                                  "unwritable cache"])
def test_a_failed_fetch_says_what_to_do_and_caches_nothing(case, server, checkpoint, tmp_path, monkeypatch,
                                                           capsys):
    cache = tmp_path / "cache"
    env = _env(server, cache)
    if case == "truncated":
        server.routes[HF_PATH] = Route(checkpoint, send_bytes=len(checkpoint) // 2)
        words = []  # cut off: urllib3's IncompleteRead, or the Content-Length check
    elif case == "wrong sha256":
        env["SAM2_CHECKPOINT_SHA256"] = "f" * 64
        words = ["sha256", "f" * 64]
    elif case == "not a checkpoint":
        server.routes[HF_PATH] = Route(os.urandom(4096))
        words = ["not a loadable SAM 2 checkpoint"]
    elif case == "404":
        env["SAM2_CHECKPOINT_URL"] = server.url + "/missing.pt"
        words = ["HTTP 404"]
    elif case == "unreachable":
        env["SAM2_CHECKPOINT_URL"] = f"http://127.0.0.1:{free_port()}/sam2.1_hiera_tiny.pt"
        words = ["ConnectionError"]
    else:
        (tmp_path / "a-file").write_text("")
        env["SAM2_CACHE_DIR"] = str(tmp_path / "a-file" / "cache")
        words = ["cannot write to the cache", "SAM2_CACHE_DIR"]
    message = _fails(env, monkeypatch, capsys, env["SAM2_CHECKPOINT_URL"], "SAM2_CHECKPOINT",
                     "SAM2_CHECKPOINT_URL", *words)
    assert "\n" not in message
    _assert_nothing_cached(cache)


def test_local_checkpoint_is_used_as_it_is(tmp_path, monkeypatch, capsys):
    local = write_checkpoint(tmp_path / "mine.pt")
    assert weights.resolve({"SAM2_CHECKPOINT": str(local), "SAM2_CHECKPOINT_URL": "http://127.0.0.1:9/x.pt"}) == local
    _fails({"SAM2_CHECKPOINT": str(tmp_path / "nowhere.pt")}, monkeypatch, capsys,
           "SAM2_CHECKPOINT=", "nowhere.pt", "is not a file")
    _fails({"SAM2_MODEL": "sam3_giant"}, monkeypatch, capsys, "SAM2_MODEL='sam3_giant'", "sam2.1_hiera_tiny")


def test_cli_prints_the_path(server, tmp_path):
    env = {**_clean_environ(), **_env(server, tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "backend.weights"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'cache' / 'sam2.1_hiera_tiny.pt'}\n"
    assert "fetching " + server.url + HF_PATH in done.stderr


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SAM2_")}


def test_readme_serve_command_starts_the_backend(server, tmp_path):
    """`bash scripts/serve.sh` as README.md writes it, on the already built venv, fetching from the local
    server; /health answers 200, then SIGTERM stops it."""
    assert "bash scripts/serve.sh\n" in (ROOT / "README.md").read_text()
    port = free_port()
    env = {**_clean_environ(), **_env(server, tmp_path / "cache"), "SAM2_VENV": sys.prefix, "PORT": str(port),
           "DEVICE": "cpu", "MEDIA_CACHE_DIR": str(tmp_path / "media")}
    log_path = tmp_path / "serve.log"
    with serving(["bash", "scripts/serve.sh"], port, env, log_path, timeout_s=180):
        pass  # it served: /health answered 200; leaving stops it
    log = log_path.read_text()
    assert server.hits == {HF_PATH: 1} and (tmp_path / "cache" / "sam2.1_hiera_tiny.pt").is_file()
    assert "installing dependencies" not in log, "serve.sh reinstalled into the test venv"
