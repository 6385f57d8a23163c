"""Our backend under gunicorn on a free loopback port, for the tests and the benchmarks that need a live server."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gunicorn_server(port: int, env: Mapping[str, str], log_path: Path,
                    timeout_s: float = 90) -> Iterator[subprocess.Popen]:
    """`gunicorn --config config/gunicorn.conf.py --bind 127.0.0.1:<port> backend.wsgi:app` with `env` over
    os.environ (see `serving`)."""
    command = [sys.executable, "-m", "gunicorn", "--config", "config/gunicorn.conf.py",
               "--bind", f"127.0.0.1:{port}", "backend.wsgi:app"]  # --bind: loopback only
    with serving(command, port, {**os.environ, **env}, log_path, timeout_s) as process:
        yield process


@contextlib.contextmanager
def serving(command: list[str], port: int, env: Mapping[str, str], log_path: Path,
            timeout_s: float = 90) -> Iterator[subprocess.Popen]:
    """Run `command` (the backend, listening on 127.0.0.1:<port>) from the repository root with exactly `env`,
    its output in `log_path`; yield the process once GET /health answers 200 (RuntimeError with the log's tail
    if it exits or stays silent for `timeout_s`). At exit: SIGTERM to its process group, SIGKILL after
    gunicorn's 30 s graceful timeout."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", process, log_path, timeout_s)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(35)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the backend exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:  # not up yet, or still booting
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the backend did not answer /health in {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
