"""Pre-annotating a project: throughput of the engines and the time until the first prediction shows.

    python bench/preannotate.py [--videos 8] [--frames 150] [--cases local1,local2,ray2] [--json PATH]
                                [--checkpoint PATH --device cuda]

Starts a real Label Studio 1.23.2 on loopback (the e2e harness's tests/e2e/label_studio.py; install it with
`bash scripts/e2e_setup.sh`), creates one video project of `videos` synthetic H.264 clips (`frames` frames,
64x48, one keyframe box each on frame 1, annotations), and a random-weight checkpoint of the e2e model (SAM 2.1
architecture, 128 px; or --checkpoint, a real one). Then, per case, runs `python -m backend.preannotate
--project P --overwrite` as a user would (a fresh process: interpreter, model loads and, for Ray, the local
Ray's start are inside the time): local1 / local2: the local engine with 1 / 2 worker processes; ray2: the Ray
engine, 2 CPU actors on a local Ray. Printed per case: wall seconds, videos per hour and frames per second over
the wall time, seconds until the first new prediction is visible through Label Studio's API (polled every 0.1
s), and each ratio against local1 from the same run. After each case the bench checks that Label Studio holds
exactly one new prediction on every task (--overwrite replaced the previous case's). Timings on a shared machine
are noisy: the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import loadavg  # noqa: E402
from sam2_model import build_model, save_checkpoint  # noqa: E402
from sam2_model.train.synthetic import generate_clip  # noqa: E402
from sam2_model.video.frames import write_h264  # noqa: E402
from tests.e2e.conftest import E2E_MODEL  # noqa: E402  (the e2e tests' small SAM 2.1-architecture model)
from tests.e2e.label_studio import LabelStudioServer  # noqa: E402
from tests.e2e.projects import FPS, VIDEO_CONFIG, videorectangle_keyframe  # noqa: E402

SIZE = (48, 64)  # (height, width) of the clips
CASES = {"local1": ("local", 1), "local2": ("local", 2), "ray2": ("ray", 2)}


def make_project(api, folder: Path, videos: int, frames: int) -> int:
    project = api.create_project("bench pre-annotate", VIDEO_CONFIG)["id"]
    for seed in range(videos):
        clip = generate_clip(seed, num_frames=frames, size=SIZE, num_objects=1, fps=FPS)
        path = folder / f"clip{seed}.mp4"
        write_h264(path, clip.frames, FPS)
        task = api.import_file(project, path)[-1]["id"]
        region = videorectangle_keyframe(1, clip.boxes()[0, 0], region_id="obj", frame_size=SIZE,
                                         frames_count=frames)
        api.request("POST", f"/api/tasks/{task}/annotations", json={"result": [region]})
    return project


def newest_prediction(api, project: int) -> int:
    ids = [p["id"] for p in api.request("GET", "/api/predictions", params={"project": project}).json()]
    return max(ids, default=0)


def run_case(name: str, server, project: int, checkpoint: Path, device: str, state: Path, videos: int,
             frames: int) -> dict:
    engine, workers = CASES[name]
    api = server.api()
    baseline = newest_prediction(api, project)
    env = dict(os.environ, SAM2_CHECKPOINT=str(checkpoint), DEVICE=device, LABEL_STUDIO_URL=server.url,
               LABEL_STUDIO_API_KEY=server.token, PREANNOTATE_STATE_DIR=str(state / name),
               MEDIA_CACHE_DIR=str(state / name / "media"), LOG_LEVEL="WARNING",
               RAY_AUTH_TOKEN=secrets.token_hex(32))  # Ray 2.60's token auth without writing ~/.ray
    first: list[float] = []
    done = threading.Event()

    def poll(started: float) -> None:
        while not done.is_set():
            if newest_prediction(api, project) > baseline:
                first.append(time.monotonic() - started)
                return
            time.sleep(0.1)

    cmd = [sys.executable, "-m", "backend.preannotate", "--project", str(project), "--overwrite", "--quiet",
           "--engine", engine, "--workers", str(workers)]
    started = time.monotonic()
    poller = threading.Thread(target=poll, args=(started,), daemon=True)
    poller.start()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    done.set()
    poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
    stored = api.request("GET", "/api/predictions", params={"project": project}).json()
    fresh = sorted(p["task"] for p in stored if p["id"] > baseline)
    if len(stored) != videos or len(set(fresh)) != videos:  # --overwrite replaced every task's one prediction
        raise SystemExit(f"{name}: expected one new prediction on each of {videos} tasks, Label Studio holds "
                         f"{len(stored)} ({len(fresh)} new, on tasks {fresh})")
    return {"case": name, "engine": engine, "workers": workers, "wall_s": wall,
            "videos_per_hour": videos * 3600 / wall, "frames_per_s": videos * frames / wall,
            "first_prediction_s": first[0] if first else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--checkpoint", type=Path, help="a SAM 2 checkpoint (default: the e2e model, random weights)")
    p.add_argument("--device", default="cpu", help="DEVICE of the workers (default: cpu)")
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown or "local1" not in cases:
        raise SystemExit(f"cases: choose from {', '.join(CASES)}, local1 included (the reference)")

    with tempfile.TemporaryDirectory(prefix="bench-preannotate-") as tmp:
        folder = Path(tmp)
        import torch

        checkpoint = args.checkpoint.resolve() if args.checkpoint else None
        if checkpoint is None:
            torch.manual_seed(0)
            checkpoint = folder / "e2e_random.pt"
            save_checkpoint(build_model(E2E_MODEL), checkpoint)
        server = LabelStudioServer.start(folder / "label-studio")
        try:
            project = make_project(server.api(), folder, args.videos, args.frames)
            print(f"project {project}: {args.videos} videos x {args.frames} frames; {loadavg()}; "
                  f"{os.cpu_count()} CPUs", flush=True)
            results = []
            for name in cases:
                results.append(run_case(name, server, project, checkpoint, args.device, folder / "state",
                                        args.videos, args.frames))
                print(f"  {name}: {results[-1]['wall_s']:.1f} s; {loadavg()}", flush=True)
        finally:
            server.stop()

    ref = next(r for r in results if r["case"] == "local1")
    print(f"\n{'case':8} {'wall s':>7} {'videos/h':>9} {'frames/s':>9} {'1st pred s':>11}   ratios vs local1 "
          "(videos/h, frames/s, 1st prediction time)")
    for r in results:
        ttfp = r["first_prediction_s"]
        ratio_ttfp = f"{ttfp / ref['first_prediction_s']:.2f}x" if ttfp and ref["first_prediction_s"] else "-"
        print(f"{r['case']:8} {r['wall_s']:7.1f} {r['videos_per_hour']:9.0f} {r['frames_per_s']:9.2f} "
              f"{ttfp if ttfp is None else round(ttfp, 1)!s:>11}   "
              f"{r['videos_per_hour'] / ref['videos_per_hour']:.2f}x, {r['frames_per_s'] / ref['frames_per_s']:.2f}x, "
              f"{ratio_ttfp}")
    print(loadavg())
    if args.json:
        args.json.write_text(json.dumps({"videos": args.videos, "frames": args.frames, "device": args.device,
                                         "checkpoint": str(args.checkpoint or "e2e random"), "results": results,
                                         "loadavg_end": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
