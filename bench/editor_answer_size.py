"""How big is an interactive answer for the editor? A 60-frame image sequence, 3 objects, one click each.

    python bench/editor_answer_size.py [--frames 60] [--size 480x854] [--seed 2]

Runs the HTTP backend in-process (Flask test client, media from a loopback stand-in for Label Studio) on a
synthetic clip (sam2_model.train.synthetic, its objects) with a small random-weight model (E2E_MODEL of the
browser tests, `--seed` weights; random weights give ragged masks, so the RLE sizes are pessimistic), then
sends the three objects' clicks one request at a time, each with the earlier answers accepted into the draft
as Label Studio's editor stores them (origin manual, no parentID). Prints per request: regions, response bytes
and the ratio to the 1 MB target of issue 20 (an answer holds the clicked object only); then the size of one
object's answer made of smooth masks (an ellipse covering 9% of the frame), as a trained model's would be. The editor's page-switch time is measured by the browser journey
(tests/e2e/test_editor_journeys.py, artifacts/e2e/journeys.log), not here.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from backend.app import create_app  # noqa: E402
from sam2_model import build_model, save_checkpoint  # noqa: E402
from sam2_model.train.synthetic import generate_clip  # noqa: E402
from tests.backend_helpers import backend_settings  # noqa: E402
from tests.e2e.conftest import E2E_MODEL  # noqa: E402
from tests.fake_label_studio import FakeLabelStudio  # noqa: E402

TARGET_BYTES = 1_000_000
CONFIG = """<View>
  <Image name="frames" valueList="$frames"/>
  <BrushLabels name="brush" toName="frames"><Label value="A"/><Label value="B"/><Label value="C"/></BrushLabels>
  <KeyPointLabels name="kp" toName="frames" smart="true"><Label value="A"/><Label value="B"/><Label value="C"/>
  </KeyPointLabels>
</View>"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="480x854", help="HEIGHTxWIDTH")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    clip = generate_clip(0, num_frames=args.frames, size=(height, width), num_objects=3, fps=25.0)
    tmp = Path(tempfile.mkdtemp())
    with FakeLabelStudio() as server:
        for i, frame in enumerate(clip.frames):
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="PNG")
            server.add(f"/data/upload/9/f{i}.png", buf.getvalue())
        torch.manual_seed(args.seed)
        checkpoint = tmp / "bench.pt"
        save_checkpoint(build_model(E2E_MODEL), checkpoint)
        settings = backend_settings(tmp, server.url, interactive_budget_s=600.0)
        settings = type(settings)(**{**settings.__dict__, "sam2_checkpoint": str(checkpoint)})
        app = create_app(settings)
        client = app.test_client()
        task = {"id": 1, "data": {"frames": [f"/data/upload/9/f{i}.png" for i in range(args.frames)]},
                "annotations": [], "drafts": [], "predictions": []}
        draft: list[dict] = []
        print(f"{args.frames} frames {width}x{height}, 3 objects, E2E_MODEL seed {args.seed}")
        print("request  objects  regions  response bytes  / 1 MB target")
        for n, label in enumerate("ABC"):
            ys, xs = clip.masks[0, n].nonzero()
            if not len(xs):
                print(f"object {label} is not on frame 0: skipped")
                continue
            click = {"id": f"click{label}", "type": "keypointlabels", "from_name": "kp", "to_name": "frames",
                     "item_index": 0, "is_positive": True,
                     "value": {"x": 100 * (xs.mean() + 0.5) / width, "y": 100 * (ys.mean() + 0.5) / height,
                               "width": 0.5, "keypointlabels": [label]}}
            task["drafts"] = [{"id": 1, "result": draft, "updated_at": f"2026-12-04T00:0{n}:00Z"}]
            body = {"tasks": [task], "project": "9.1", "label_config": CONFIG,
                    "params": {"context": {"result": [click]}}}
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.get_json()
            result = response.get_json()["results"][0]["result"]
            size = len(response.get_data())
            print(f"{n + 1:7d}  {len({r['parentID'] for r in result}):7d}  {len(result):7d}  {size:14d}  "
                  f"{size / TARGET_BYTES:.2f}")
            accepted = {r["id"]: {k: v for k, v in r.items() if k not in ("parentID", "score")} | {"origin": "manual"}
                        for r in result}
            draft = [accepted.pop(r["id"], r) for r in draft] + list(accepted.values())
        print(f"draft after three accepts: {len(draft)} regions, {len(json.dumps(draft))} bytes")
        app.extensions["sam2_backend"].close()
    smooth_answer_size(args.frames, height, width)


def smooth_answer_size(frames: int, height: int, width: int, share: float = 0.09) -> None:
    """What one object's answer weighs when its masks are smooth, as a trained model's are: an ellipse covering
    `share` of the frame, moving and turning, encoded by the backend's own brush converter on every frame."""
    import cv2

    from backend.results import mask_to_brush

    minor = (share * height * width / np.pi / 1.4) ** 0.5  # ellipse area pi·a·b, b = 1.4·a
    axes = (int(minor), int(1.4 * minor))
    regions = []
    for f in range(frames):
        mask = np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, (width // 3 + f, height // 2), axes, 3.0 * f, 0, 360, 1, -1)
        regions.append(mask_to_brush(mask.astype(bool), region_id=f"smooth_{f}", from_name="brush", to_name="frames",
                                     labels=["A"], item_index=f, score=0.9, parent_id="smooth"))
    size = len(json.dumps({"results": [{"result": regions, "score": 0.9, "model_version": "9.1"}]}))
    print(f"smooth masks ({share:.0%} of the frame, ellipse): one object's answer, {frames} regions, {size} bytes, "
          f"{size / TARGET_BYTES:.2f} of the 1 MB target")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
