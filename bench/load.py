"""Load on the real gunicorn server: concurrent clients sending interactive requests over several video tasks.

    python bench/load.py [--clients 8] [--requests 50] [--tasks 4] [--budget-mb 4] [--ttl-s 30]

Starts a fake Label Studio (127.0.0.1) serving one synthetic H.264 clip per task (task t has 12 + 2t frames) and
gunicorn (gthread, WORKERS=1, THREADS=4) with a small random-weight SAM 2, then lets `clients` threads send
`requests` each, cycling over the tasks and over three kinds: a click and a box (event protocol "predict"),
and a box keyframe that propagates (classic interactive /predict, MAX_PROPAGATION_FRAMES=6). Prints requests,
errors, p50/p95 latency, cross-task leaks (a result for task A naming task B's objects or frame count), the
worker's peak RSS (VmHWM) and the session metrics. Loopback only. The result is also printed as one JSON line.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.backend_helpers import CAPTURED, h264_bytes, write_checkpoint  # noqa: E402
from tests.fake_label_studio import LEGACY_TOKEN, FakeLabelStudio  # noqa: E402
from tests.live_gunicorn import free_port, gunicorn_server  # noqa: E402

EVENTS = ROOT / "tests" / "data" / "events"
AUTH = ("annotator", "s3cret-pass")
AUTH_HEADERS = {"Authorization": "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()}


def task_frames(task: int) -> int:
    return 12 + 2 * task


def task_video(task: int) -> str:
    return f"/data/upload/{task}/clip-{task}.mp4"


class LiveServer:
    """gunicorn serving backend.wsgi:app on 127.0.0.1; `url`, `auth`, `request()`, `worker_pid()`, `log()`."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path, self.auth = proc, url, log_path, AUTH

    def request(self, method: str, path: str, body: dict | bytes | None = None, auth: bool = True,
                timeout: float = 120.0) -> tuple[int, dict | str]:
        """(status, JSON body or text) of one request."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(AUTH_HEADERS if auth else {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def worker_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def worker_memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the worker, in bytes."""
        fields = {}
        for line in Path(f"/proc/{self.worker_pid()}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) << 10
        return fields

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def fake_label_studio(tasks: int, tmp: Path) -> Iterator[FakeLabelStudio]:
    """A fake Label Studio serving task_video(t) for t in 1..tasks."""
    with FakeLabelStudio() as ls:
        for t in range(1, tasks + 1):
            folder = tmp / f"v{t}"
            folder.mkdir(exist_ok=True)
            ls.add(task_video(t), h264_bytes(folder, n=task_frames(t)))
        yield ls


@contextlib.contextmanager
def live_server(tmp: Path, ls_url: str, **env: str) -> Iterator[LiveServer]:
    """gunicorn with a small random-weight checkpoint, basic auth, Label Studio at `ls_url`; env overrides."""
    checkpoint = tmp / "backend_test.pt"
    if not checkpoint.exists():
        write_checkpoint(checkpoint)
    port = free_port()
    closed = free_port()  # nothing listens: media that are not on loopback never leave the machine
    full_env = dict(SAM2_CHECKPOINT=str(checkpoint), DEVICE="cpu", LABEL_STUDIO_URL=ls_url,
                    LABEL_STUDIO_API_KEY=LEGACY_TOKEN, BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1],
                    MEDIA_CACHE_DIR=str(tmp / f"cache-{port}"), WORKERS="1", THREADS="4", LOG_LEVEL="INFO",
                    MAX_PROPAGATION_FRAMES="6", OMP_NUM_THREADS="1",
                    HTTP_PROXY=f"http://127.0.0.1:{closed}", HTTPS_PROXY=f"http://127.0.0.1:{closed}",
                    NO_PROXY="127.0.0.1,localhost")
    full_env.update(env)
    log_path = tmp / f"gunicorn-{port}.log"
    with gunicorn_server(port, full_env, log_path) as proc:
        yield LiveServer(proc, f"http://127.0.0.1:{port}", log_path)


def request_body(kind: str, task: int) -> dict:
    """One interactive /predict body of `kind` (click, box, propagate) for `task`, ids naming the task."""
    if kind == "propagate":
        body = copy.deepcopy(CAPTURED["predict_interactive"])
        region = body["params"]["context"]["result"][0]
        region["id"] = f"t{task}-box"
        region["value"]["framesCount"] = task_frames(task)
    else:
        body = json.loads((EVENTS / f"predict_{kind}.json").read_text())
        body["params"]["context"]["object_id"] = f"t{task}"
    body["tasks"][0]["id"] = task
    body["tasks"][0]["data"] = {"video": task_video(task)}
    body["project"] = "1.1"
    return body


def leaks(kind: str, task: int, answer: dict) -> list[str]:
    """What in `answer` belongs to another task than `task` (empty when nothing)."""
    found = []
    for item in answer["results"][0]["result"]:
        text = json.dumps(item)
        found += [f"names t{other}" for other in range(1, 100) if other != task and f'"t{other}' in text]
        value = item.get("value", {})
        if kind == "propagate" and value.get("framesCount", task_frames(task)) != task_frames(task):
            found.append(f"framesCount {value['framesCount']} of another video")
        if kind != "propagate" and value.get("object_id") not in (None, f"t{task}"):
            found.append(f"object_id {value['object_id']}")
    return found


def run_load(server: LiveServer, clients: int, requests: int, tasks: int) -> dict:
    """Send clients x requests interactive requests; figures as a dict."""
    kinds = ("click", "box", "propagate")
    latencies: list[float] = []
    errors: list[str] = []
    leaked: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(requests):
            task, kind = (c + i) % tasks + 1, kinds[(c * 7 + i) % len(kinds)]
            started = time.perf_counter()
            try:
                status, answer = server.request("POST", "/predict", request_body(kind, task))
            except OSError as exc:
                status, answer = 0, f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors.append(f"{kind} task {task}: HTTP {status} {answer}")
                else:
                    leaked.extend(f"{kind} task {task}: {x}" for x in leaks(kind, task, answer))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    metrics = server.request("GET", "/metrics")[1]
    return {"requests": len(latencies), "errors": len(errors), "error_samples": errors[:3], "leaks": leaked[:5],
            "p50_s": statistics.median(latencies), "p95_s": q[18], "wall_s": wall,
            "worker_peak_rss_mb": server.worker_memory()["VmHWM"] / 2**20,
            "sessions": {k: metrics[k] for k in ("sessions", "session_bytes", "sessions_created",
                                                 "sessions_evicted")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--budget-mb", type=float, default=4.0, help="SESSION_BUDGET_MB")
    parser.add_argument("--ttl-s", type=float, default=30.0, help="SESSION_TTL_S")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fake_label_studio(args.tasks, Path(tmp)) as ls, \
            live_server(Path(tmp), ls.url, SESSION_BUDGET_MB=str(args.budget_mb), SESSION_TTL_S=str(args.ttl_s),
                        LOG_LEVEL="WARNING") as server:
        server.request("POST", "/predict", request_body("click", 1))  # load the model first
        idle = server.worker_memory()["VmRSS"] / 2**20
        figures = run_load(server, args.clients, args.requests, args.tasks)
    figures["worker_rss_after_first_request_mb"] = idle
    print(f"requests {figures['requests']}  errors {figures['errors']}  leaks {len(figures['leaks'])}")
    print(f"latency p50 {figures['p50_s'] * 1e3:.0f} ms  p95 {figures['p95_s'] * 1e3:.0f} ms  "
          f"wall {figures['wall_s']:.1f} s")
    print(f"worker RSS after the first request {idle:.0f} MiB, peak {figures['worker_peak_rss_mb']:.0f} MiB "
          f"(SESSION_BUDGET_MB {args.budget_mb})")
    print(f"sessions {figures['sessions']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
