"""/health latency while the backend tracks: 8 concurrent tracks, each followed by a long-polling client.

    python bench/health_under_load.py [--tracks 8] [--frames 60] [--seconds 20] [--threads 4]

Starts a fake Label Studio (127.0.0.1) serving one synthetic H.264 clip per track and gunicorn (gthread,
WORKERS=1, THREADS=--threads) with a small random-weight SAM 2. First probes /health alone (idle reference), then
for --seconds keeps --tracks event-protocol tracks running (predict_box, then track both ways over the whole
clip; a poller per track long-polls track_progress, pausing --backoff-s after an empty answer, and starts the
next track when one is done) while the same
prober calls /health every 20 ms with Label Studio's 1 s timeout. Prints /health p50/p99/max idle and under
load, their ratio, the probes over 1 s (Label Studio would mark the backend disconnected), and the frames
tracked. Loopback only. The result is also printed as one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.load import EVENTS, LiveServer, live_server  # noqa: E402
from tests.backend_helpers import TRACKING_SEED, h264_bytes, write_checkpoint  # noqa: E402
from tests.fake_label_studio import FakeLabelStudio  # noqa: E402

LS_HEALTH_TIMEOUT_S = 1.0  # Label Studio's timeout for GET /health


def event_body(name: str, task: int, **context) -> dict:
    body = json.loads((EVENTS / f"{name}.json").read_text())
    body["tasks"][0]["id"] = task
    body["tasks"][0]["data"] = {"video": f"/data/upload/{task}/clip.mp4"}
    body["project"] = "1.1"
    body["params"]["context"].update(context)
    return body


def probe(server: LiveServer, stop: threading.Event, out: list[float], period_s: float = 0.02) -> None:
    """GET /health every period_s until stop; latencies in seconds (LS_HEALTH_TIMEOUT_S + 1 for a failure)."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=LS_HEALTH_TIMEOUT_S) as r:
                ok = r.status == 200
        except (urllib.error.URLError, TimeoutError, OSError):
            ok = False
        out.append(time.perf_counter() - started if ok else LS_HEALTH_TIMEOUT_S + 1)
        stop.wait(period_s)


def quantiles(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"n": len(v), "p50_ms": v[len(v) // 2] * 1e3, "p99_ms": v[min(len(v) - 1, int(len(v) * 0.99))] * 1e3,
            "max_ms": v[-1] * 1e3, "over_1s": sum(x > LS_HEALTH_TIMEOUT_S for x in v)}


def tracker(server: LiveServer, task: int, frames: int, stop: threading.Event, stats: dict,
            backoff_s: float) -> None:
    """Track task's clip over and over until stop, polling every track to its end; after an empty answer the
    next poll comes backoff_s later."""
    server.request("POST", "/predict", event_body("predict_box", task, time_ms=0.0))
    while not stop.is_set():
        status, answer = server.request("POST", "/predict", event_body(
            "track", task, time_ms=frames * 20.0, direction="both", max_frames=frames))
        item = answer["results"][0]["result"][0] if status == 200 else None
        if item is None or item["type"] != "track_started":
            stats["refused"] += 1
            stop.wait(0.5)
            continue
        session, produced = item["value"]["session_id"], 0
        while not stop.is_set():
            status, answer = server.request("POST", "/predict", event_body("track_progress", task, session_id=session))
            stats["polls"] += 1
            value = answer["results"][0]["result"][0]["value"] if status == 200 else {"done": True}
            stats["frames"] += value.get("produced", produced) - produced
            produced = value.get("produced", produced)
            if value["done"]:
                break
            if not value.get("frames") and backoff_s:
                stop.wait(backoff_s)  # an answer with nothing yet: the poll did not wait (all wait slots busy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=8)
    parser.add_argument("--frames", type=int, default=60, help="frames per clip")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the load phase")
    parser.add_argument("--threads", type=int, default=4, help="THREADS of the gunicorn worker")
    parser.add_argument("--backoff-s", type=float, default=0.1,
                        help="pause of a poller after an empty answer (0: poll again at once)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeLabelStudio() as ls:
        for t in range(1, args.tracks + 1):
            folder = Path(tmp) / f"v{t}"
            folder.mkdir()
            ls.add(f"/data/upload/{t}/clip.mp4", h264_bytes(folder, n=args.frames))
        write_checkpoint(Path(tmp) / "backend_test.pt", seed=TRACKING_SEED)  # masks not empty: PNGs are sent
        with live_server(Path(tmp), ls.url, THREADS=str(args.threads), LOG_LEVEL="WARNING",
                         MAX_PROPAGATION_FRAMES=str(args.frames), SESSION_BUDGET_MB="512") as server:
            server.request("POST", "/predict", event_body("predict_box", 1))  # load the model
            stop, idle = threading.Event(), []
            prober = threading.Thread(target=probe, args=(server, stop, idle))
            prober.start()
            time.sleep(min(5.0, args.seconds / 2))
            stop.set()
            prober.join()
            stats = {"frames": 0, "polls": 0, "refused": 0}
            stop, loaded = threading.Event(), []
            workers = [threading.Thread(target=tracker, args=(server, t, args.frames, stop, stats, args.backoff_s))
                       for t in range(1, args.tracks + 1)]
            prober = threading.Thread(target=probe, args=(server, stop, loaded))
            for w in workers + [prober]:
                w.start()
            time.sleep(args.seconds)
            stop.set()
            for w in workers + [prober]:
                w.join()
    figures = {"idle": quantiles(idle), "load": quantiles(loaded), "tracks": args.tracks, "threads": args.threads,
               "backoff_s": args.backoff_s, "seconds": args.seconds, **stats}
    figures["p99_ratio_load_over_idle"] = figures["load"]["p99_ms"] / figures["idle"]["p99_ms"]
    for phase in ("idle", "load"):
        q = figures[phase]
        print(f"/health {phase:4s}: n {q['n']}  p50 {q['p50_ms']:.1f} ms  p99 {q['p99_ms']:.1f} ms  "
              f"max {q['max_ms']:.1f} ms  over 1 s {q['over_1s']}")
    print(f"p99 load/idle {figures['p99_ratio_load_over_idle']:.1f}x; {args.tracks} tracks: {stats['frames']} frames "
          f"tracked, {stats['polls']} polls, {stats['refused']} tracks refused, THREADS {args.threads}, "
          f"poller backoff {args.backoff_s} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
