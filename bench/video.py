"""Video engine, ours vs the reference SAM2VideoPredictor on the same random weights (sam2.1_hiera_tiny).

    python bench/video.py [--only a,b,c,d] [--json out.json]

a. time to first mask on a fresh 1280×720 H.264 video: a box prompt on frame 150 of a 300-frame video.
   Reference: `init_state` on the extracted JPEG folder (extraction timed apart, not counted) +
   `add_new_points_or_box`; ours: `predictor.open(mp4)` + `add_prompt`; ours also on a 3000-frame video.
   Every measured case runs in a fresh subprocess (cold start, honest peak RSS), cases interleaved.
b. peak RSS of (a)'s cases: total, and the increase over the RSS right after the model is loaded.
c. propagation speed (frames per second), float32, 1 and 3 objects boxed on the start frame of a 480×854 clip.
d. bfloat16: ours with `VideoPredictor(dtype=torch.bfloat16)` vs the reference in float32 and under
   `torch.autocast("cpu", dtype=torch.bfloat16)` on (c)'s propagation, and the pixel agreement of our bf16 masks
   with the reference's float32 masks on a short clip.

(c) and (d) run their cases in one process in lockstep, one frame of each in turn, after a warm-up.
Videos and clips are generated with `sam2_model.train.synthetic` and cached under --cache-dir.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from common import (DEFAULT_CACHE, environment, load_ours, load_reference, loadavg, median, print_table, ratio,
                    reference_checkpoint, set_threads, write_json)

CONFIG = "sam2.1_hiera_tiny"
# as in tests/test_video_parity.py: every prompted frame is a conditioning frame (our semantics); the reference's
# hole filling needs a CUDA extension and is skipped on CPU anyway
REFERENCE_KWARGS = dict(add_all_frames_to_correct_as_cond=True, fill_hole_area=0)
RESULT_TAG = "BENCH_RESULT "
MB = 1 << 20


def parse_size(text: str) -> tuple[int, int]:
    """"720x1280" -> (720, 1280), i.e. (height, width)."""
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


# ----------------------------------------------------------------------------------------------- inputs


def long_video(cache: Path, frames: int, size: tuple[int, int], seed: int) -> tuple[Path, Any, float]:
    """(mp4 path, T×K×4 ground-truth boxes, seconds spent generating: 0 when cached)."""
    import numpy as np

    from sam2_model.train.synthetic import generate_long_video

    path = cache / "videos" / f"synthetic_{frames}f_{size[0]}x{size[1]}_s{seed}.mp4"
    boxes_path = path.with_suffix(".boxes.npy")
    if path.exists() and boxes_path.exists():
        return path, np.load(boxes_path), 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    boxes = generate_long_video(path, frames, size=size, fps=24.0, seed=seed, preset="ultrafast")
    np.save(boxes_path, boxes)
    return path, boxes, time.perf_counter() - t


def extract_jpegs(video: Path, folder: Path) -> float:
    """Decode every frame of `video` into `folder`/<index>.jpg (quality 95); returns the seconds it took."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    t = time.perf_counter()
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        i += 1
    cap.release()
    return time.perf_counter() - t


def clip_folder(cache: Path, frames: int, size: tuple[int, int], seed: int, objects: int) -> tuple[Path, list]:
    """A JPEG folder of a synthetic clip and each object's frame-0 ground-truth box [x1, y1, x2, y2]."""
    from PIL import Image

    from sam2_model.train.synthetic import generate_clip

    folder = cache / "clips" / f"clip_{frames}f_{size[0]}x{size[1]}_s{seed}_k{objects}"
    boxes_file = folder / "boxes.json"
    if boxes_file.exists():
        return folder, json.loads(boxes_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    clip = generate_clip(seed, frames, size, objects)
    for i, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    boxes = [[float(v) for v in box] for box in clip.boxes()[0]]
    boxes_file.write_text(json.dumps(boxes))
    return folder, boxes


def box_on(boxes, frame: int) -> list[float]:
    """The ground-truth box of the largest object visible on `frame`."""
    import numpy as np

    b = boxes[frame]
    area = np.nan_to_num((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), nan=-1.0)
    return [float(v) for v in b[int(area.argmax())]]


# ------------------------------------------------------------------------- (a, b): worker subprocesses


def rss_now() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(spec: dict) -> dict:
    """One time-to-first-mask measurement in this (fresh) process."""
    t0 = time.perf_counter()
    import torch

    if spec["impl"] == "ours":
        from sam2_model.video.predictor import VideoPredictor
    else:
        import sam2.sam2_video_predictor  # noqa: F401  (import cost measured here, not in the model load)
    torch.set_num_threads(spec["threads"])
    import_s = time.perf_counter() - t0

    t = time.perf_counter()
    if spec["impl"] == "ours":
        predictor = VideoPredictor(load_ours(CONFIG, Path(spec["checkpoint"])))
    else:
        ref = load_reference(CONFIG, Path(spec["checkpoint"]), video=True, **REFERENCE_KWARGS)
    load_s = time.perf_counter() - t
    gc.collect()
    base_rss, base_peak = rss_now(), peak_rss()

    frame, box = spec["frame"], spec["box"]
    t, c = time.perf_counter(), time.process_time()
    if spec["impl"] == "ours":
        session = predictor.open(spec["video"])
        open_s = time.perf_counter() - t
        mask = session.add_prompt(frame, 1, box=box).masks[0]
    else:
        with torch.inference_mode():
            state = ref.init_state(spec["video"])
            open_s = time.perf_counter() - t
            _, _, logits = ref.add_new_points_or_box(state, frame, 1, box=box)
            mask = (logits[0, 0] > 0).numpy()
    first_mask_s = time.perf_counter() - t
    first_mask_cpu_s = time.process_time() - c
    peak = peak_rss()
    return dict(impl=spec["impl"], label=spec["label"], import_s=import_s, load_s=load_s, open_s=open_s,
                first_mask_s=first_mask_s, first_mask_cpu_s=first_mask_cpu_s, prompt_s=first_mask_s - open_s,
                peak_rss=peak, base_rss=base_rss, base_peak_rss=base_peak, rss_increase=peak - base_rss,
                mask_fraction=float(mask.mean()), frame_size=list(mask.shape))


def run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"worker {spec['label']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def bench_first_mask(args, ckpt: Path, threads: int) -> dict:
    """(a) and (b): fresh-subprocess cases, interleaved, median over --ttfm-repeats."""
    size = parse_size(args.ttfm_size)
    cases = []
    for frames in (args.ttfm_frames, args.ttfm_long_frames):
        video, boxes, gen_s = long_video(args.cache_dir, frames, size, args.seed)
        print(f"video {video.name}: {'generated in %.1f s' % gen_s if gen_s else 'cached'}")
        cases.append((frames, video, box_on(boxes, args.prompt_frame)))
    short_video, short_box = cases[0][1], cases[0][2]
    folder = args.cache_dir / "jpeg" / short_video.stem
    extract_s = extract_jpegs(short_video, folder)
    print(f"JPEG extraction for the reference ({args.ttfm_frames} frames): {extract_s:.1f} s (not counted)")

    specs = [dict(impl="ref", label=f"reference {args.ttfm_frames}", video=str(folder), box=short_box)]
    specs += [dict(impl="ours", label=f"ours {frames}", video=str(video), box=box) for frames, video, box in cases]
    for spec in specs:
        spec.update(checkpoint=str(ckpt), frame=args.prompt_frame, threads=threads)
    runs: dict[str, list[dict]] = {s["label"]: [] for s in specs}
    for r in range(args.ttfm_repeats):
        for spec in specs if r % 2 == 0 else reversed(specs):
            res = run_worker(spec)
            runs[spec["label"]].append(res)
            print(f"  run {r + 1}: {spec['label']:>16}: first mask {res['first_mask_s']:6.2f} s, "
                  f"peak RSS {res['peak_rss'] / MB:7.0f} MB ({loadavg()})", flush=True)
    summary = {}
    for label, rs in runs.items():
        summary[label] = {key: median([x[key] for x in rs]) for key in
                          ("import_s", "load_s", "open_s", "prompt_s", "first_mask_s", "first_mask_cpu_s",
                           "peak_rss", "base_rss",
                           "rss_increase", "mask_fraction")}
        summary[label]["runs"] = rs
    return dict(extract_jpeg_s=extract_s, prompt_frame=args.prompt_frame, size=list(size), cases=summary,
                labels=[s["label"] for s in specs])


def report_first_mask(res: dict, args, show_a: bool, show_b: bool) -> dict:
    ref, short, long_ = (res["cases"][label] for label in res["labels"])
    n, n_long = args.ttfm_frames, args.ttfm_long_frames
    out = {}
    if show_a:
        rows = [[label, c["first_mask_s"], c["open_s"], c["prompt_s"], c["first_mask_cpu_s"], c["load_s"],
                 c["import_s"]] for label, c in res["cases"].items()]
        print_table(f"(a) time to first mask, box on frame {args.prompt_frame} (median of {args.ttfm_repeats} fresh "
                    f"processes; seconds; first mask = open/init_state + prompt; JPEG extraction for the reference "
                    f"{res['extract_jpeg_s']:.1f} s not counted)",
                    ["case", "first mask", "open", "prompt", "first mask cpu", "model load", "imports"], rows)
        out["a"] = dict(speedup_300=ratio(ref["first_mask_s"], short["first_mask_s"]),
                        long_over_short=ratio(long_["first_mask_s"], short["first_mask_s"]),
                        cpu_speedup_300=ratio(ref["first_mask_cpu_s"], short["first_mask_cpu_s"]),
                        cpu_long_over_short=ratio(long_["first_mask_cpu_s"], short["first_mask_cpu_s"]))
        print(f"reference({n}) / ours({n}) = {out['a']['speedup_300']:.2f}x (cpu {out['a']['cpu_speedup_300']:.2f}x)"
              f"   ours({n_long}) / ours({n}) = {out['a']['long_over_short']:.2f} "
              f"(cpu {out['a']['cpu_long_over_short']:.2f})")
    if show_b:
        rows = [[label, c["peak_rss"] / MB, c["base_rss"] / MB, c["rss_increase"] / MB]
                for label, c in res["cases"].items()]
        print_table("(b) peak RSS in MB (ru_maxrss of the fresh process; increase = peak - RSS after model load)",
                    ["case", "peak total", "after load", "increase"], rows)
        out["b"] = dict(ours_over_ref_peak=ratio(short["peak_rss"], ref["peak_rss"]),
                        ours_over_ref_increase=ratio(short["rss_increase"], ref["rss_increase"]),
                        long_minus_short_peak_mb=(long_["peak_rss"] - short["peak_rss"]) / MB)
        print(f"ours({n}) / reference({n}) peak = {out['b']['ours_over_ref_peak']:.3f}, increase = "
              f"{out['b']['ours_over_ref_increase']:.3f}   ours({n_long}) - ours({n}) peak = "
              f"{out['b']['long_minus_short_peak_mb']:+.0f} MB")
    return out


# --------------------------------------------------------------------------------- (c, d): propagation


class Propagation:
    """One propagation, prepared (session opened, every object boxed on frame 0) but not started.

    `step()` computes and returns the next frame's (frame index, K×H×W bool masks); None at the end. `start`
    makes the frame iterator on the first step, so that the first step includes all the work of starting the
    propagation (the memory encoding of the prompted frames: the reference does it lazily in its generator, our
    session eagerly in `propagate()`)."""

    def __init__(self, start, context=contextlib.nullcontext):
        self.context = context
        self._start = start
        self._frames = None

    @classmethod
    def reference(cls, ref, folder: Path, boxes: list, frames: int, autocast: bool = False) -> "Propagation":
        import torch

        context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
        with torch.inference_mode(), context():
            state = ref.init_state(str(folder))
            for k, box in enumerate(boxes):
                ref.add_new_points_or_box(state, 0, k + 1, box=box)
        return cls(lambda: ((idx, (logits[:, 0] > 0).numpy()) for idx, _, logits in
                            ref.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=frames)), context)

    @classmethod
    def ours(cls, predictor, folder: Path, boxes: list, frames: int) -> "Propagation":
        session = predictor.open(folder)
        for k, box in enumerate(boxes):
            session.add_prompt(0, k + 1, box=box)
        return cls(lambda: ((r.frame_idx, r.masks)
                            for r in session.propagate("forward", start_frame=0, max_frames=frames)))

    def step(self):
        with self.context():
            if self._frames is None:
                self._frames = self._start()
            return next(self._frames, None)


def lockstep(makers: dict[str, Any]) -> dict[str, dict]:
    """Run propagations side by side, one frame of each in turn (the order flips every frame), so that a
    machine whose load changes slows them alike. makers: name -> () -> Propagation.
    -> name -> {"total_s", "cpu_s" (process CPU time, all threads), "frame_s", "masks": {frame: K×H×W bool},
    "error": str (only if it failed)}."""
    runs = {name: dict(total_s=0.0, cpu_s=0.0, frame_s=[], masks={}) for name in makers}
    live = {}
    for name, make in makers.items():
        try:
            live[name] = make()
        except Exception as exc:  # the reference under CPU autocast may not run: report what fails
            runs[name]["error"] = describe_error(exc)
    step = 0
    while live:
        for name in list(live) if step % 2 == 0 else list(reversed(live)):
            t, c = time.perf_counter(), time.process_time()
            try:
                item = live[name].step()
            except Exception as exc:
                runs[name]["error"] = describe_error(exc)
                del live[name]
                continue
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if item is None:
                del live[name]
                continue
            runs[name]["frame_s"].append(dt)
            runs[name]["total_s"] += dt
            runs[name]["cpu_s"] += dc
            runs[name]["masks"][item[0]] = item[1]
        step += 1
    return runs


def agreement(a: dict, b: dict) -> dict:
    """Share of equal pixels of two {frame: K×H×W bool} results over all frames and objects, and foreground
    shares (a near-empty mask would make agreement meaningless)."""
    frames = sorted(set(a) & set(b))
    equal = sum(int((a[f] == b[f]).sum()) for f in frames)
    total = sum(a[f].size for f in frames)
    fg = lambda m: sum(int(m[f].sum()) for f in frames) / max(total, 1)  # noqa: E731
    return dict(equal_pct=100.0 * equal / max(total, 1), frames=len(frames), fg_a_pct=100 * fg(a),
                fg_b_pct=100 * fg(b), same_frames=sorted(a) == sorted(b))


def describe_error(exc: BaseException) -> str:
    """The exception and the innermost frames of the reference that raised it."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "site-packages" in f.filename][-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}: {f.line}" for f in reversed(frames))
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} at {where}"


def bench_propagation(args, ckpt: Path) -> dict:
    """(c): float32 propagation fps, 1 and 3 objects, ours vs reference (in lockstep)."""
    from sam2_model.video.predictor import VideoPredictor

    size = parse_size(args.clip_size)
    objects = [int(k) for k in args.objects.split(",")]
    folder, boxes = clip_folder(args.cache_dir, args.frames + 1, size, args.seed, max(objects))
    ref = load_reference(CONFIG, ckpt, video=True, **REFERENCE_KWARGS)
    ours = VideoPredictor(load_ours(CONFIG, ckpt))

    def makers(k: int, frames: int) -> dict:
        return {"reference": lambda: Propagation.reference(ref, folder, boxes[:k], frames),
                "ours": lambda: Propagation.ours(ours, folder, boxes[:k], frames)}

    lockstep(makers(1, 1))  # warm-up
    rows = []
    for k in objects:
        runs = [lockstep(makers(k, args.frames)) for _ in range(args.repeats)]
        for r, run in enumerate(runs):
            print(f"  {k} object(s), round {r + 1}: reference {run['reference']['total_s']:6.1f} s, "
                  f"ours {run['ours']['total_s']:6.1f} s ({loadavg()})", flush=True)
        ref_s = median([run["reference"]["total_s"] for run in runs])
        ours_s = median([run["ours"]["total_s"] for run in runs])
        ref_cpu = median([run["reference"]["cpu_s"] for run in runs])
        ours_cpu = median([run["ours"]["cpu_s"] for run in runs])
        agree = agreement(runs[-1]["ours"]["masks"], runs[-1]["reference"]["masks"])
        rows.append(dict(objects=k, frames=args.frames, ours_fps=args.frames / ours_s,
                         reference_fps=args.frames / ref_s, speedup=ref_s / ours_s, ours_total_s=ours_s,
                         reference_total_s=ref_s, ours_cpu_s=ours_cpu, reference_cpu_s=ref_cpu,
                         cpu_speedup=ref_cpu / ours_cpu, agreement_pct=agree["equal_pct"], fg_pct=agree["fg_b_pct"],
                         ours_frame_s=[run["ours"]["frame_s"] for run in runs],
                         reference_frame_s=[run["reference"]["frame_s"] for run in runs]))
    print_table(f"(c) float32 propagation, {size[0]}x{size[1]}, {args.frames} frames after the prompted frame, "
                f"ours and reference in lockstep (median of {args.repeats}; speedup = ours fps / reference fps; "
                f"cpu = process CPU seconds; agree = % equal mask pixels ours vs reference; fg = foreground %)",
                ["objects", "ours fps", "reference fps", "speedup", "ours s", "reference s", "ours cpu s",
                 "ref cpu s", "cpu speedup", "agree %", "fg %"],
                [[r["objects"], r["ours_fps"], r["reference_fps"], r["speedup"], r["ours_total_s"],
                  r["reference_total_s"], r["ours_cpu_s"], r["reference_cpu_s"], r["cpu_speedup"],
                  r["agreement_pct"], r["fg_pct"]] for r in rows])
    return dict(size=list(size), frames=args.frames, results=rows)


def bench_bfloat16(args, ckpt: Path) -> dict:
    """(d): ours bf16 vs reference fp32 and reference under CPU bf16 autocast (in lockstep); mask agreement."""
    import torch

    from sam2_model.video.predictor import VideoPredictor

    size = parse_size(args.clip_size)
    folder, boxes = clip_folder(args.cache_dir, args.frames + 1, size, args.seed, max(3, args.d_objects))
    boxes = boxes[:args.d_objects]
    ref = load_reference(CONFIG, ckpt, video=True, **REFERENCE_KWARGS)
    model = load_ours(CONFIG, ckpt)
    ours16 = VideoPredictor(model, dtype=torch.bfloat16)
    ours32 = VideoPredictor(model)

    def makers(folder: Path, boxes: list, frames: int) -> dict:
        return {
            "ours bf16": lambda: Propagation.ours(ours16, folder, boxes, frames),
            "ours fp32": lambda: Propagation.ours(ours32, folder, boxes, frames),
            "reference fp32": lambda: Propagation.reference(ref, folder, boxes, frames),
            "reference autocast bf16": lambda: Propagation.reference(ref, folder, boxes, frames, autocast=True),
        }

    errors = {name: run["error"] for name, run in lockstep(makers(folder, boxes, 1)).items() if "error" in run}
    runs = [lockstep(makers(folder, boxes, args.frames)) for _ in range(args.repeats)]
    for r, run in enumerate(runs):
        print(f"  round {r + 1}: " + ", ".join(f"{name} {x['total_s']:.1f} s" for name, x in run.items())
              + f" ({loadavg()})", flush=True)
        errors.update({name: x["error"] for name, x in run.items() if "error" in x})
    names = list(runs[0])
    seconds = {name: [run[name]["total_s"] for run in runs] for name in names if name not in errors}
    cpu = {name: [run[name]["cpu_s"] for run in runs] for name in names if name not in errors}
    speed = {name: args.frames / median(t) for name, t in seconds.items()}
    cpu_speed = {name: args.frames / median(t) for name, t in cpu.items()}
    nan = float("nan")
    rel = lambda d, name, base: ratio(d.get(name, nan), d.get(base, nan))  # noqa: E731
    rows = [[name, speed.get(name, nan), rel(speed, name, "reference fp32"),
             rel(speed, name, "reference autocast bf16"), median(cpu[name]) if name in cpu else nan,
             rel(cpu_speed, name, "reference fp32"), rel(cpu_speed, name, "reference autocast bf16"),
             errors.get(name, "")] for name in names]
    print_table(f"(d) propagation speed, {len(boxes)} object(s), {size[0]}x{size[1]}, {args.frames} frames, "
                f"all four in lockstep (median of {args.repeats}; x = fps / fps of that reference mode; cpu = the "
                f"same from process CPU time)",
                ["case", "fps", "x ref fp32", "x ref autocast", "cpu s", "cpu x ref fp32", "cpu x ref autocast",
                 "error"], rows)

    agree_folder, agree_boxes = clip_folder(args.cache_dir, args.agree_frames, size, args.seed + 100,
                                            args.agree_objects)
    masks = lockstep(makers(agree_folder, agree_boxes, args.agree_frames - 1))
    agree = {f"{name} vs reference fp32": agreement(run["masks"], masks["reference fp32"]["masks"])
             for name, run in masks.items() if name != "reference fp32" and "error" not in run}
    errors.update({f"{name} (agreement clip)": x["error"] for name, x in masks.items() if "error" in x})
    print_table(f"(d) mask agreement on a {args.agree_frames}-frame {size[0]}x{size[1]} clip, "
                f"{len(agree_boxes)} objects boxed on frame 0 (% equal pixels over all frames and objects; "
                f"fg = foreground %)",
                ["pair", "equal %", "frames", "fg % (first)", "fg % (ref fp32)"],
                [[name, a["equal_pct"], a["frames"], a["fg_a_pct"], a["fg_b_pct"]] for name, a in agree.items()])
    for name, error in errors.items():
        print(f"  {name} FAILED: {error}")
    return dict(size=list(size), frames=args.frames, objects=len(boxes), fps=speed, seconds=seconds, cpu_s=cpu,
                frame_s={name: [run[name]["frame_s"] for run in runs] for name in names}, errors=errors,
                agreement=agree, agree_frames=args.agree_frames, agree_objects=len(agree_boxes))


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="a,b,c,d", help="comma-separated sub-benchmarks: a, b, c, d")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic videos")
    parser.add_argument("--json", default=None, help="write the numbers to this JSON file")
    g = parser.add_argument_group("a, b: time to first mask and peak RSS")
    g.add_argument("--ttfm-frames", type=int, default=300)
    g.add_argument("--ttfm-long-frames", type=int, default=3000)
    g.add_argument("--ttfm-size", default="720x1280", help="HxW of the H.264 videos")
    g.add_argument("--prompt-frame", type=int, default=150)
    g.add_argument("--ttfm-repeats", type=int, default=3, help="fresh processes per case")
    g = parser.add_argument_group("c, d: propagation")
    g.add_argument("--frames", type=int, default=8, help="frames propagated after the prompted frame")
    g.add_argument("--clip-size", default="480x854", help="HxW of the propagation clip")
    g.add_argument("--objects", default="1,3", help="(c) object counts")
    g.add_argument("--repeats", type=int, default=1, help="(c, d) timed propagations per case")
    g.add_argument("--d-objects", type=int, default=1, help="(d) objects in the speed comparison")
    g.add_argument("--agree-frames", type=int, default=6, help="(d) frames of the agreement clip")
    g.add_argument("--agree-objects", type=int, default=2, help="(d) objects of the agreement clip")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(RESULT_TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set("abcd")
    if unknown:
        parser.error(f"unknown sub-benchmarks {sorted(unknown)}; choose from a, b, c, d")
    threads = set_threads(args.threads)
    env = environment(threads)
    print(f"video engine: ours vs reference, {CONFIG} (random weights), torch threads {threads}, {loadavg()}")
    ckpt = reference_checkpoint(CONFIG, args.cache_dir)
    out: dict[str, Any] = {"benchmark": "video", "environment": env, "config": CONFIG, "wall_s": {}}
    t_all = time.perf_counter()
    if "a" in only or "b" in only:
        t = time.perf_counter()
        print(f"\n== (a, b) time to first mask and peak RSS ({loadavg()})")
        res = bench_first_mask(args, ckpt, threads)
        out["first_mask"] = res
        out["summary"] = report_first_mask(res, args, "a" in only, "b" in only)
        out["wall_s"]["a+b"] = time.perf_counter() - t
        print(f"(a, b) wall time {out['wall_s']['a+b']:.1f} s; {loadavg()}")
    if "c" in only:
        t = time.perf_counter()
        print(f"\n== (c) float32 propagation ({loadavg()})")
        out["propagation"] = bench_propagation(args, ckpt)
        out["wall_s"]["c"] = time.perf_counter() - t
        print(f"(c) wall time {out['wall_s']['c']:.1f} s; {loadavg()}")
    if "d" in only:
        t = time.perf_counter()
        print(f"\n== (d) bfloat16 ({loadavg()})")
        out["bfloat16"] = bench_bfloat16(args, ckpt)
        out["wall_s"]["d"] = time.perf_counter() - t
        print(f"(d) wall time {out['wall_s']['d']:.1f} s; {loadavg()}")
    out["wall_s"]["total"] = time.perf_counter() - t_all
    env["loadavg_end"] = list(os.getloadavg())
    print(f"\ntotal wall time {out['wall_s']['total']:.1f} s; {loadavg()}")
    write_json(args.json, strip_masks(out))


def strip_masks(obj: Any) -> Any:
    """The result tree without mask arrays (not JSON material)."""
    if isinstance(obj, dict):
        return {k: strip_masks(v) for k, v in obj.items() if k != "masks"}
    if isinstance(obj, list):
        return [strip_masks(v) for v in obj]
    return obj


if __name__ == "__main__":
    main()
