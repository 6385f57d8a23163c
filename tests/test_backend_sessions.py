"""backend.sessions.SessionStore (TTL, byte budget, locking) and config.settings / gunicorn config."""
from __future__ import annotations

import json
import os
import runpy
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from backend.sessions import SessionStore
from config.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent


class Value:
    def __init__(self, size: int):
        self.size, self.closed = size, False

    def close(self):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _use(store, key, size=10):
    with store.use(key, lambda: Value(size), lambda v: v.size) as entry:
        return entry.value


def test_ttl_and_budget_eviction():
    clock = Clock()
    store = SessionStore(ttl_s=100, budget_bytes=25, clock=clock)
    a = _use(store, "a")
    clock.now = 50
    b = _use(store, "b")
    assert _use(store, "a") is a  # reused
    clock.now = 151  # "a" and "b" were last used at 50: expired
    c = _use(store, "c")
    assert a.closed and b.closed and not c.closed
    clock.now = 160
    d = _use(store, "d")
    e = _use(store, "e")  # 30 bytes > 25: the least recently used ("c") goes
    assert c.closed and not d.closed and not e.closed
    assert store.stats()["sessions"] == 2 and store.stats()["session_bytes"] == 20
    assert store.release("d") and d.closed and not store.release("d")
    store.close()
    assert e.closed


def test_entry_in_use_is_not_evicted_and_failed_factory_is_dropped():
    store = SessionStore(ttl_s=1, budget_bytes=5, clock=Clock())
    with store.use("big", lambda: Value(100), lambda v: v.size) as entry:
        _use(store, "other", size=1)
        assert not entry.value.closed  # over budget, but in use
    assert entry.value is None  # evicted (closed) once released
    with pytest.raises(RuntimeError):
        with store.use("bad", lambda: (_ for _ in ()).throw(RuntimeError("boom"))):
            pass
    assert "bad" not in store._entries


def test_one_request_per_key_at_a_time_and_one_factory_call():
    store = SessionStore(ttl_s=100, budget_bytes=1 << 30)
    calls, active, peak = [], [0], [0]
    lock = threading.Lock()

    def work():
        with store.use("k", lambda: calls.append(1) or Value(1)):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.01)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and peak[0] == 1


# ---------------------------------------------------------------- settings


def test_settings_defaults_and_env():
    s = Settings.from_env({})
    assert (s.port, s.workers, s.threads, s.log_level, s.device) == (9090, 1, 4, "INFO", "auto")
    assert s.sam2_checkpoint is None and s.basic_auth is None
    assert s.interactive_budget_s < s.predict_budget_s < 100  # below Label Studio's /predict timeout
    s = Settings.from_env({"PORT": "9191", "LOG_LEVEL": "debug", "SAM2_CHECKPOINT": "/m/sam2.1_hiera_tiny.pt",
                           "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "FEATURE_CACHE_MB": "64",
                           "LABEL_STUDIO_URL": "http://127.0.0.1:8080", "DEVICE": "cuda:1", "MAX_PROPAGATION_FRAMES": ""})
    assert (s.port, s.log_level, s.feature_cache_mb, s.basic_auth, s.device) == (9191, "DEBUG", 64, ("u", "p"), "cuda:1")
    assert s.max_propagation_frames == 100000  # empty = default


@pytest.mark.parametrize("env, name", [
    ({"PORT": "http"}, "PORT"), ({"PORT": "70000"}, "PORT"), ({"WORKERS": "0"}, "WORKERS"),
    ({"SESSION_TTL_S": "-1"}, "SESSION_TTL_S"), ({"INTERACTIVE_BUDGET_S": "soon"}, "INTERACTIVE_BUDGET_S"),
    ({"DEVICE": "gpu"}, "DEVICE"), ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"), ({"SAM2_DTYPE": "int8"}, "SAM2_DTYPE"),
    ({"LABEL_STUDIO_URL": "localhost:8080"}, "LABEL_STUDIO_URL"), ({"BASIC_AUTH_PASS": "p"}, "BASIC_AUTH_USER"),
])
def test_settings_errors_name_the_variable(env, name):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_gunicorn_config(monkeypatch):
    monkeypatch.setenv("PORT", "9300")
    monkeypatch.setenv("THREADS", "6")
    conf = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert conf["bind"] == "0.0.0.0:9300" and conf["worker_class"] == "gthread" and conf["threads"] == 6
    assert conf["timeout"] > 100  # never kill a worker before Label Studio's /predict timeout


def test_gunicorn_serves_the_app(tmp_path):
    """The documented start command works (bound to loopback for the test)."""
    pytest.importorskip("gunicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PORT=str(port), MEDIA_CACHE_DIR=str(tmp_path), LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.conf.py",
                             "--bind", f"127.0.0.1:{port}", "backend.wsgi:app"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.load(r)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "gunicorn did not answer /health"
                time.sleep(0.3)
        assert health["status"] == "UP" and health["model_loaded"] is False
    finally:
        proc.terminate()
        proc.wait(timeout=30)
