"""Bounded model concurrency (sam2_model/gate.py): one forward pass per device at a time, whatever thread
runs it (request, tracking, prewarm), and torch threads from the cores."""
from __future__ import annotations

import threading
import time

import numpy as np
import torch

from sam2_model import ImagePredictor
from sam2_model.gate import available_cores, configure_threads, device_gate
from tests.backend_helpers import clip_frames, small_model


def test_one_gate_per_device():
    assert device_gate("cpu") is device_gate(torch.device("cpu"))
    assert device_gate("cuda") is device_gate("cuda:0") and device_gate("cuda:1") is not device_gate("cuda:0")
    assert device_gate("cpu") is not device_gate("cuda:0")


class Overlap:
    """Wraps a model method; records the most calls running at once."""

    def __init__(self, fn):
        self.fn, self.running, self.most, self.calls = fn, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.005)  # widen the window in which an unguarded second call would overlap
            return self.fn(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_forward_passes_never_overlap_across_threads():
    """Image predictors, video sessions embedding frames and a propagation share one model on one device:
    its image encoder never runs twice at once."""
    from sam2_model.video.predictor import VideoPredictor
    model = small_model()
    spy = Overlap(model.encode_image)
    model.encode_image = spy
    frames = np.stack(clip_frames(8))
    sessions = [VideoPredictor(model).open(list(frames)) for _ in range(2)]
    sessions[0].add_prompt(0, "a", box=(10, 16, 28, 34))

    def image_work():
        predictor = ImagePredictor(model)
        for f in frames[:3]:
            predictor.set_image(f)
            predictor.predict(point_coords=np.array([[20.0, 20.0]]), point_labels=np.array([1]))

    def embed_work():
        for i in range(8):
            sessions[1].embed(i)

    def track_work():
        list(sessions[0].propagate("forward"))

    threads = [threading.Thread(target=t) for t in (image_work, image_work, embed_work, track_work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spy.calls >= 6 + 8 + 7 and spy.most == 1


def test_torch_threads_from_the_cores():
    before = torch.get_num_threads()
    try:
        assert configure_threads(processes=1) == available_cores() == torch.get_num_threads()
        assert configure_threads(processes=available_cores() * 2) == 1 == torch.get_num_threads()
        assert configure_threads(threads=3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
