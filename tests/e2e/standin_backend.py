"""A stand-in ML backend for the harness self-test: Flask, in a thread, fixed but valid predictions.

It speaks the ML backend protocol Label Studio 1.23.2 uses (/health, /setup, /predict, /webhook) and
records every request, so the tests can check Label Studio's side of the conversation without SAM 2:

- Video configs (<Video> + <VideoRectangle>): one "Car" box track with keyframes on frames 1, middle and
  last. Interactive: the user's region comes back with keyframes added on frame 1 and the last frame.
- Image-sequence configs (<Image valueList> + <BrushLabels>): one "Car" brush mask, a square that moves
  one step per frame, on every frame (item_index). Interactive: a brush region the user sent comes back
  unchanged, plus copies of its mask on every other frame.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flask import Flask, jsonify, request
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from label_studio_sdk.label_interface import LabelInterface
from werkzeug.serving import make_server

MODEL_VERSION = "standin-1"


@dataclass
class Media:
    """What the stand-in must know of the test media (Label Studio's tasks do not say it)."""

    video_frames: int
    video_fps: float
    frame_size: tuple[int, int]  # (height, width) of each image of the sequence
    sequence_length: int


def square_mask(size: tuple[int, int], frame: int) -> np.ndarray:
    """The stand-in's mask on `frame`: a quarter-size square stepping right and down. (H, W) bool."""
    h, w = size
    side = min(h, w) // 4
    y, x = min(h - side, 4 + 2 * frame), min(w - side, 4 + 3 * frame)
    mask = np.zeros(size, bool)
    mask[y:y + side, x:x + side] = True
    return mask


def brush_region(mask: np.ndarray, *, from_name: str, to_name: str, item_index: int, region_id: str,
                 labels: list[str]) -> dict:
    return {
        "id": region_id, "type": "brushlabels", "from_name": from_name, "to_name": to_name,
        "item_index": item_index, "original_width": int(mask.shape[1]), "original_height": int(mask.shape[0]),
        "image_rotation": 0, "score": 0.9,
        "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)],
                  "brushlabels": labels},
    }


def _control(config: LabelInterface, tag: str):
    return next((c for c in config.controls if c.tag == tag), None)


@dataclass
class StandInBackend:
    media: Media
    requests: list[tuple[str, Any]] = field(default_factory=list)

    def app(self) -> Flask:
        app = Flask("standin_backend")

        @app.get("/health")
        def health():
            return jsonify(status="UP", model_class="StandInBackend")

        @app.post("/setup")
        def setup():
            self.requests.append(("/setup", request.get_json(silent=True)))
            return jsonify(model_version=MODEL_VERSION)

        @app.post("/webhook")
        def webhook():
            self.requests.append(("/webhook", request.get_json(silent=True)))
            return jsonify(status="ok")

        @app.post("/predict")
        def predict():
            body = request.get_json()
            self.requests.append(("/predict", body))
            context = (body.get("params") or {}).get("context")
            config = LabelInterface(body["label_config"])
            results = [{"result": self.predict_task(config, (context or {}).get("result")),
                        "score": 0.9, "model_version": MODEL_VERSION} for _ in body["tasks"]]
            return jsonify(results=results, model_version=MODEL_VERSION)

        return app

    def predict_task(self, config: LabelInterface, context: list[dict] | None) -> list[dict]:
        box = _control(config, "VideoRectangle")
        if box is not None:
            return self._video(box, _control(config, "Labels"), context)
        brush = _control(config, "BrushLabels")
        if brush is not None:
            return self._sequence(brush, context)
        return []

    def _video(self, box, labels, context: list[dict] | None) -> list[dict]:
        n, fps = self.media.video_frames, self.media.video_fps
        given = [r for r in context or [] if r.get("type") == "videorectangle"]
        if given:
            region = copy.deepcopy(given[0])
            keys = {k["frame"]: k for k in region["value"]["sequence"]}
            first = keys[min(keys)]
            for frame in (1, n):
                keys.setdefault(frame, {**first, "frame": frame, "time": (frame - 1) / fps, "enabled": True})
            region["value"]["sequence"] = [keys[f] for f in sorted(keys)]
            region["origin"] = "prediction"
            return [region]
        sequence = [{"frame": f, "time": (f - 1) / fps, "x": 10.0 + 40.0 * (f - 1) / max(n - 1, 1), "y": 20.0,
                     "width": 30.0, "height": 40.0, "rotation": 0, "enabled": True}
                    for f in sorted({1, (n + 1) // 2, n})]
        value = {"framesCount": n, "duration": n / fps, "sequence": sequence}
        if labels is not None:
            value["labels"] = ["Car"]
        return [{"id": "standin-car", "type": "videorectangle", "from_name": box.name, "to_name": box.to_name[0],
                 "origin": "prediction", "score": 0.9, "value": value}]

    def _sequence(self, brush, context: list[dict] | None) -> list[dict]:
        names = {"from_name": brush.name, "to_name": brush.to_name[0]}
        given = [r for r in context or [] if r.get("type") == "brushlabels"]
        if given:
            user = given[0]
            h, w = user["original_height"], user["original_width"]
            mask = decode_rle(user["value"]["rle"]).reshape(h, w, 4)[..., 3] > 0
            labels = user["value"].get("brushlabels") or ["Car"]
            copies = [brush_region(mask, **names, item_index=i, region_id=f"{user['id']}-{i}", labels=labels)
                      for i in range(self.media.sequence_length) if i != user["item_index"]]
            return [user, *copies]
        return [brush_region(square_mask(self.media.frame_size, i), **names, item_index=i,
                             region_id=f"standin-car-{i}", labels=["Car"])
                for i in range(self.media.sequence_length)]


class ServerThread:
    """Serves a WSGI app on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Flask):
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(10)
