"""Image mode, ours vs the reference on the same random weights: image-encoder latency (`set_image`) and
decoder-only latency on a cached embedding (`predict` with a point or a box, multimask on and off).

    python bench/image_predictor.py [--configs sam2.1_hiera_tiny,sam2.1_hiera_small] [--json out.json]

The reference side runs the reference SAM2ImagePredictor's steps on the reference model's own methods
(`tests/oracle.ReferenceImagePredictor`). Median of --repeats interleaved calls after --warmup untimed ones.
"""
from __future__ import annotations

import argparse
import os
import time

from common import (environment, image_arguments, interleaved, load_ours, load_reference, loadavg, median,
                    print_table, ratio, reference_checkpoint, set_threads, synthetic_image, write_json)

PROMPTS = {  # pixel coordinates on a 1280×720 image (scaled for other sizes)
    "1 point, multimask": dict(point_coords=[[640.0, 360.0]], point_labels=[1], multimask_output=True),
    "1 point, single mask": dict(point_coords=[[640.0, 360.0]], point_labels=[1], multimask_output=False),
    "box, multimask": dict(box=[420.0, 200.0, 900.0, 560.0], multimask_output=True),
    "box, single mask": dict(box=[420.0, 200.0, 900.0, 560.0], multimask_output=False),
}


def scaled(prompt: dict, sx: float, sy: float) -> dict:
    out = dict(prompt)
    if "point_coords" in out:
        out["point_coords"] = [[x * sx, y * sy] for x, y in out["point_coords"]]
    if "box" in out:
        x1, y1, x2, y2 = out["box"]
        out["box"] = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
    return out


def bench_config(name: str, image, args) -> list[dict]:
    import torch
    from oracle import ReferenceImagePredictor

    from sam2_model import ImagePredictor

    ckpt = reference_checkpoint(name, args.cache_dir)
    ref_model = load_reference(name, ckpt)
    ours = ImagePredictor(load_ours(name, ckpt))
    rows = []
    with torch.inference_mode():
        holder = {}
        times = interleaved(
            {"reference": lambda: holder.__setitem__("ref", ReferenceImagePredictor(ref_model, image)),
             "ours": lambda: ours.set_image(image)},
            repeats=args.encoder_repeats, warmup=args.warmup)
        rows.append(row(name, "set_image (encoder)", times, args.encoder_repeats))
        h, w = image.shape[:2]
        for case, prompt in PROMPTS.items():
            kwargs = scaled(prompt, w / 1280, h / 720)
            times = interleaved(
                {"reference": lambda: holder["ref"].predict(**kwargs),
                 "ours": lambda: ours.predict(**kwargs, return_logits=True)},
                repeats=args.decoder_repeats, warmup=args.warmup)
            rows.append(row(name, f"predict: {case}", times, args.decoder_repeats))
    return rows


def row(config: str, case: str, times: dict, repeats: int) -> dict:
    """Medians of wall and CPU seconds, and the speedups reference / ours."""
    med = {f"{impl}_{kind}_s": median(times[impl][kind]) for impl in ("ours", "reference") for kind in ("wall", "cpu")}
    return dict(config=config, case=case, repeats=repeats, **med,
                speedup=ratio(med["reference_wall_s"], med["ours_wall_s"]),
                cpu_speedup=ratio(med["reference_cpu_s"], med["ours_cpu_s"]), samples=times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    image_arguments(parser, "720x1280")
    parser.add_argument("--encoder-repeats", type=int, default=5)
    parser.add_argument("--decoder-repeats", type=int, default=30)
    args = parser.parse_args()

    threads = set_threads(args.threads)
    env = environment(threads)
    image, h, w = synthetic_image(args.image_size)
    print(f"image predictor: ours vs reference, {h}x{w} image, torch threads {threads}, {loadavg()}")
    t0 = time.perf_counter()
    rows = []
    for name in args.configs.split(","):
        rows += bench_config(name.strip(), image, args)
    wall = time.perf_counter() - t0
    print_table(
        f"Image predictor, {h}x{w} image (median seconds of n interleaved calls; speedup = reference / ours; "
        f"cpu = process CPU time; threads {threads})",
        ["config", "case", "ours s", "reference s", "speedup", "ours cpu s", "ref cpu s", "cpu speedup", "n"],
        [[r["config"], r["case"], r["ours_wall_s"], r["reference_wall_s"], r["speedup"], r["ours_cpu_s"],
          r["reference_cpu_s"], r["cpu_speedup"], r["repeats"]] for r in rows])
    print(f"\nwall time {wall:.1f} s; {loadavg()}")
    env["loadavg_end"] = list(os.getloadavg())
    write_json(args.json, {"benchmark": "image_predictor", "environment": env, "wall_s": wall, "results": rows})


if __name__ == "__main__":
    main()
