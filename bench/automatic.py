"""Automatic mask generation, ours vs the reference SAM2AutomaticMaskGenerator on the same random weights and
threads: seconds per `generate` on one image, and the ratio reference / ours.

    python bench/automatic.py [--configs sam2.1_hiera_tiny] [--points-per-side 16] [--crop-n-layers 0]
                              [--image-size 480x640] [--repeats 3] [--json out.json]

The reference's torchvision imports are served by the exact stand-ins of the test harness
(tests/fake_torchvision.py). Thresholds are loosened (random weights) so that masks survive the filters and
both sides do the same post-processing work; the number of masks of each side is printed (they must agree).
"""
from __future__ import annotations

import argparse
import os
import time

from common import (environment, image_arguments, interleaved, load_ours, load_reference, loadavg, median,
                    print_table, ratio, reference_checkpoint, set_threads, synthetic_image, write_json)

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9, mask_threshold=0.0)


def bench_config(name: str, image, args) -> dict:
    import fake_torchvision

    fake_torchvision.install()
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from sam2_model.automatic import MaskGenerator

    ckpt = reference_checkpoint(name, args.cache_dir)
    options = dict(LOOSE, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                   crop_n_layers=args.crop_n_layers)
    reference = SAM2AutomaticMaskGenerator(load_reference(name, ckpt), **options)
    ours = MaskGenerator(load_ours(name, ckpt), **options)
    counts = {}
    with torch.inference_mode():
        times = interleaved({"reference": lambda: counts.__setitem__("reference", len(reference.generate(image))),
                             "ours": lambda: counts.__setitem__("ours", len(ours.generate(image)))},
                            repeats=args.repeats, warmup=args.warmup)
    med = {f"{impl}_{kind}_s": median(times[impl][kind]) for impl in ("ours", "reference") for kind in ("wall", "cpu")}
    return dict(config=name, masks_ours=counts["ours"], masks_reference=counts["reference"], repeats=args.repeats,
                **med, speedup=ratio(med["reference_wall_s"], med["ours_wall_s"]),
                cpu_speedup=ratio(med["reference_cpu_s"], med["ours_cpu_s"]), samples=times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    image_arguments(parser, "480x640")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    threads = set_threads(args.threads)
    env = environment(threads)
    image, h, w = synthetic_image(args.image_size)
    print(f"automatic masks: ours vs reference, {h}x{w} image, {args.points_per_side}² points, "
          f"crop layers {args.crop_n_layers}, torch threads {threads}, {loadavg()}")
    t0 = time.perf_counter()
    rows = [bench_config(name.strip(), image, args) for name in args.configs.split(",")]
    wall = time.perf_counter() - t0
    print_table(
        f"generate() on a {h}x{w} image (median seconds of n interleaved calls; speedup = reference / ours; "
        f"cpu = process CPU time; threads {threads})",
        ["config", "masks ours", "masks ref", "ours s", "reference s", "speedup", "ours cpu s", "ref cpu s",
         "cpu speedup", "n"],
        [[r["config"], r["masks_ours"], r["masks_reference"], r["ours_wall_s"], r["reference_wall_s"], r["speedup"],
          r["ours_cpu_s"], r["reference_cpu_s"], r["cpu_speedup"], r["repeats"]] for r in rows])
    print(f"\nwall time {wall:.1f} s; {loadavg()}")
    env["loadavg_end"] = list(os.getloadavg())
    write_json(args.json, {"benchmark": "automatic", "environment": env, "wall_s": wall, "results": rows})


if __name__ == "__main__":
    main()
