"""Shared helpers of the benchmarks: paths, the shared random-weight checkpoint, timing, tables, JSON.

Every benchmark compares our `sam2_model` with Meta's reference (`sam2==1.1.0`, the test oracle) side by side
in one run, on the same random weights: the reference is built, re-randomised with `tests/oracle.randomize_`,
saved once in the official layout under the cache folder, and both models load that file.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "tests", ROOT):  # sam2_model and the test oracle helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

os.environ.setdefault("TQDM_DISABLE", "1")  # the reference's progress bars
DEFAULT_CACHE = ROOT / ".cache" / "bench"
OBJECT_SCORE_BIAS = 1.0  # like the parity tests: random-weight objects are mostly "present"


def environment(threads: int) -> dict[str, Any]:
    """Machine facts that every result file carries (threads, load, versions)."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "loadavg_start": list(os.getloadavg()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def loadavg() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def reference_checkpoint(name: str, cache: Path, seed: int = 1) -> Path:
    """An official-layout checkpoint of `name` with random weights (built once, then reused)."""
    path = cache / "checkpoints" / f"{name}_seed{seed}.pt"
    if path.exists():
        return path
    import torch
    from oracle import build_reference, randomize_, save_official_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ref = randomize_(build_reference(name), seed=seed)
    with torch.no_grad():
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(OBJECT_SCORE_BIAS)
    tmp = path.with_suffix(".partial")
    save_official_checkpoint(ref.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def load_reference(name: str, checkpoint: Path, video: bool = False, **model_kwargs: Any):
    """The reference model (image: SAM2Base, video: SAM2VideoPredictor) with the checkpoint's weights."""
    import torch
    from oracle import build_reference

    ref = build_reference(name, video=video, **model_kwargs)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def load_ours(name: str, checkpoint: Path):
    from sam2_model import load_model

    return load_model(checkpoint, config=name)


def image_arguments(parser, image_size: str) -> None:
    """The options every single-image bench shares: --configs, --image-size, --threads, --warmup, --cache-dir,
    --json."""
    parser.add_argument("--configs", default="sam2.1_hiera_tiny", help="comma-separated official config names")
    parser.add_argument("--image-size", default=image_size, help="HxW of the test image")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", default=None, help="write the numbers to this JSON file")


def synthetic_image(size: str):
    """A synthetic H×W×3 uint8 image with 3 objects, size "HxW" -> (image, h, w)."""
    from sam2_model.train.synthetic import generate_clip

    h, w = (int(v) for v in size.lower().split("x"))
    return generate_clip(seed=11, num_frames=1, size=(h, w), num_objects=3).frames[0], h, w


def interleaved(cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict[str, list]]:
    """Wall and CPU seconds per call of each case: `warmup` untimed rounds, then `repeats` timed rounds in which
    the cases take turns (the order is reversed every other round, so slow drifts of the machine hit all alike).
    -> name -> {"wall": [...], "cpu": [...]}; CPU time (all threads of this process) is less disturbed than wall
    time by other work on a loaded machine."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, dict[str, list]] = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            t, c = time.perf_counter(), time.process_time()
            cases[name]()
            times[name]["cpu"].append(time.process_time() - c)
            times[name]["wall"].append(time.perf_counter() - t)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))
    sys.stdout.flush()


def measure_in_child(script: str, *args: Any) -> dict[str, Any]:
    """Run `python script --_child args...` in a fresh process (its own peak RSS) and return the JSON object
    printed on its last line (its stderr, e.g. progress, passes through)."""
    out = subprocess.run([sys.executable, script, "--_child", *map(str, args)], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    print(f"\nwrote {path}")
