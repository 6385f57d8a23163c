"""Injected faults: each gives a clear JSON error (never a partial prediction as a success) and the service keeps
serving. Media faults through Flask's test client with fake hosts on loopback; start-up and disconnects
against gunicorn."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from bench.load import AUTH_HEADERS, ROOT, live_server, request_body, task_frames, task_video
from tests.backend_helpers import h264_bytes, write_checkpoint
from tests.fake_label_studio import LEGACY_TOKEN, FakeLabelStudio

@pytest.fixture
def make_faulty_client(make_client):
    return lambda **changes: make_client(**{"media_allow_private_hosts": True, "download_timeout_s": 1.0,
                                            **changes})


def _error(response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert set(response.get_json()) == {"error"}  # no results next to the error
    message = response.get_json()["error"]
    assert all(w in message for w in words), message


def _ok(client, task: int = 1, kind: str = "click") -> dict:
    response = client.post("/predict", json=request_body(kind, task))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _with_media(media: str, kind: str = "click") -> dict:
    body = request_body(kind, 1)
    body["tasks"][0]["data"]["video"] = media
    return body


def test_label_studio_unreachable_then_back(make_faulty_client, ls):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    down = make_faulty_client(label_studio_url=f"http://127.0.0.1:{port}")
    _error(down.post("/predict", json=request_body("click", 1)), 502, "unreachable")
    assert down.get("/health").status_code == 200
    _ok(make_faulty_client())


def test_label_studio_slow(make_faulty_client):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = make_faulty_client(label_studio_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        _error(client.post("/predict", json=request_body("click", 1)), 502, "unreachable", "Timeout")
        assert time.monotonic() - started < 10  # DOWNLOAD_TIMEOUT_S=1
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("case, status, words", [
    ("wrong token", 502, ["refused", "LABEL_STUDIO_API_KEY"]),
    ("missing file", 422, ["not found", "HTTP 404"]),
    ("truncated", 422, ["not decodable"]),
    ("corrupt", 422, ["not decodable"]),
])
def test_media_faults(make_faulty_client, ls, case, status, words):
    data = ls.files[task_video(1)]
    ls.add("/data/upload/8/truncated.mp4", data[: len(data) // 3])
    ls.add("/data/upload/8/corrupt.mp4", data[:64] + bytes(range(256)) * 40)
    media = {"wrong token": task_video(1), "missing file": "/data/upload/8/none.mp4",
             "truncated": "/data/upload/8/truncated.mp4", "corrupt": "/data/upload/8/corrupt.mp4"}[case]
    client = make_faulty_client(label_studio_api_key="wrong" if case == "wrong token" else LEGACY_TOKEN)
    for kind in ("click", "propagate"):
        _error(client.post("/predict", json=_with_media(media, kind)), status, *words)
    if case != "wrong token":
        _ok(client)
    assert client.get("/metrics").get_json()["sessions"] <= 1


def test_media_host_401(make_faulty_client, ls):
    with FakeLabelStudio(require_auth=True, host="127.0.0.2") as host:  # wants a token the backend never sends
        host.add("/data/private.mp4", ls.files[task_video(1)])
        client = make_faulty_client()
        _error(client.post("/predict", json=_with_media(f"{host.url}/data/private.mp4")), 422, "HTTP 401")
        assert host.requests == [("GET", "/data/private.mp4", None)]
        _ok(client)


def test_video_changed_behind_the_same_url(make_faulty_client, ls, tmp_path):
    """Media are cached by reference (documented in backend/media.py): the answer stays that of the first
    video, whole and consistent, never a mix of both."""
    path = "/data/upload/8/changing.mp4"
    ls.add(path, h264_bytes(tmp_path, n=20))
    client = make_faulty_client()
    body = _with_media(path, "propagate")
    body["tasks"][0]["id"] = 80
    first = client.post("/predict", json=body).get_json()
    ls.add(path, h264_bytes(tmp_path, n=8))  # same URL, other bytes
    second = client.post("/predict", json=body).get_json()
    assert first == second and first["results"][0]["result"]
    # a fresh backend (cache emptied) sees the new video: frames beyond it are a clear 422 (frame 40 is 1.3 s
    # past its end, beyond the 0.5 s that are clamped to the last frame: Label Studio often counts one more)
    fresh = make_faulty_client()
    body["params"]["context"]["result"][0]["value"]["sequence"][0]["frame"] = 40
    _error(fresh.post("/predict", json=body), 422)


def test_session_budget_too_small_for_the_request(make_faulty_client):
    """A budget that cannot hold the request's results: a clear 413 before any tracking, nothing held, and
    the service goes on serving."""
    client = make_faulty_client(session_budget_mb=0.001)
    body = request_body("propagate", 1)
    _error(client.post("/predict", json=body), 413, "SESSION_BUDGET_MB", "MB of session memory")
    assert client.get("/metrics").get_json()["session_bytes"] <= 0.001 * 2**20  # nothing tracked, nothing kept
    _error(client.post("/predict", json=body), 413, "SESSION_BUDGET_MB")  # the same answer again
    assert client.get("/health").status_code == 200
    assert _ok(make_faulty_client(), 1, "propagate")["results"][0]["result"]  # a sized budget serves it


# ---------------------------------------------------------------- gunicorn


def _start(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.conf.py",
                           "--bind", "127.0.0.1:0", "backend.wsgi:app"], cwd=ROOT, env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated"])
def test_bad_checkpoint_stops_the_start(tmp_path, kind):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    if kind == "corrupt":
        path.write_bytes(b"not a checkpoint" * 100)
    elif kind == "truncated":
        data = write_checkpoint(tmp_path / "good.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    done = _start({"SAM2_CHECKPOINT": str(path), "MEDIA_CACHE_DIR": str(tmp_path)})
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "sam2-backend: cannot start: SAM2_CHECKPOINT=" in output and "Traceback" not in output, output
    assert output.count("cannot start") == 1 and "Booting worker" not in output


@pytest.mark.slow
def test_client_disconnects_mid_propagation(rel_tmp, ls):
    with live_server(rel_tmp, ls.url, MAX_PROPAGATION_FRAMES="10000", LOG_LEVEL="WARNING") as server:
        worker = server.worker_pid()
        body = request_body("propagate", 4)
        raw = json.dumps(body).encode()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as s:
                head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Authorization: {AUTH_HEADERS['Authorization']}\r\nContent-Length: {len(raw)}\r\n\r\n")
                s.sendall(head.encode() + raw)
                time.sleep(0.05)  # the propagation has started; hang up
        status, answer = server.request("POST", "/predict", body)
        assert status == 200 and answer["results"][0]["result"][0]["value"]["framesCount"] == task_frames(4)
        assert server.worker_pid() == worker and server.request("GET", "/health", auth=False)[0] == 200
        assert "Traceback" not in server.log()
