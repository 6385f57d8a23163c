"""Video sessions: bad input, bounded state, reuse of computed features, batching, threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from sam2_model import build_model, custom_config
from sam2_model.train.metrics import region_similarity
from sam2_model.video.frames import FrameSource, VideoReadError
from sam2_model.video.predictor import VideoPredictor
from sam2_model.video.session import FrameIndexError, PromptError, SessionError, UnknownObjectError

CFG = custom_config("session_test", image_size=128, d_model=64, memory_dim=16, decoder_mlp_dim=128,
                    memory_attention_ff_dim=128, memory_attention_layers=2)
H, W = 72, 96


class MovingSquare(FrameSource):
    """Frames drawn on demand (nothing stored): a bright square moving right over a dark gradient."""

    def __init__(self, frame_count: int):
        self.frame_count, self.fps, self.frame_size = frame_count, 25.0, (H, W)
        self.reads = 0

    def get(self, idx: int) -> np.ndarray:
        idx = self._check_index(idx)
        self.reads += 1
        frame = np.zeros((H, W, 3), np.uint8)
        frame[..., 2] = np.linspace(0, 80, W, dtype=np.uint8)[None]
        x = 10 + idx % 50
        frame[20:50, x:x + 30] = (230, 200, 40)
        return frame


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CFG)


@pytest.fixture
def session(model):
    s = VideoPredictor(model, feature_cache_bytes=8 << 20).open(MovingSquare(40))
    yield s
    s.close()


def test_metadata_and_lazy_open(model):
    source = MovingSquare(10_000)
    s = VideoPredictor(model).open(source)
    assert (s.frame_count, s.fps, s.frame_size) == (10_000, 25.0, (H, W))
    assert source.reads == 0  # opening decodes nothing
    r = s.add_prompt(5000, 1, box=[10, 20, 40, 50])
    assert source.reads == 1 and r.frame_idx == 5000 and r.masks.shape == (1, H, W)


@pytest.mark.parametrize("call, error, message", [
    (lambda s: s.add_prompt(40, 1, points=[[5, 5]], labels=[1]), FrameIndexError, "outside the video"),
    (lambda s: s.add_prompt(-1, 1, points=[[5, 5]], labels=[1]), FrameIndexError, "outside the video"),
    (lambda s: s.add_prompt(1.5, 1, points=[[5, 5]], labels=[1]), FrameIndexError, "integer"),
    (lambda s: s.add_prompt(0, 1), PromptError, "empty prompt"),
    (lambda s: s.add_prompt(0, 1, labels=[1]), PromptError, "labels were given without points"),
    (lambda s: s.add_prompt(0, 1, points=[[5, 5]]), PromptError, "without labels"),
    (lambda s: s.add_prompt(0, 1, points=[[5, 5]], labels=[1, 0]), PromptError, "need 1 labels"),
    (lambda s: s.add_prompt(0, 1, points=[[5, 5]], labels=[3]), PromptError, "labels must be"),
    (lambda s: s.add_prompt(0, 1, points=[[500, 5]], labels=[1]), PromptError, "outside the 96×72 frame"),
    (lambda s: s.add_prompt(0, 1, box=[10, 10, 10, 30]), PromptError, "zero or negative area"),
    (lambda s: s.add_prompt(0, 1, box=[30, 10, 20, 30]), PromptError, "zero or negative area"),
    (lambda s: s.add_prompt(0, 1, box=[1, 2, 3]), PromptError, "4 numbers"),
    (lambda s: s.add_prompt(0, 1, mask=np.ones((10, 10), bool)), PromptError, "frame shape"),
    (lambda s: s.add_prompt(0, 1, mask=np.ones((H, W), bool), box=[1, 1, 9, 9]), PromptError, "cannot be combined"),
    (lambda s: s.add_prompt(0, 7, box=[1, 1, 9, 9], clear_old=False), PromptError, "box must be the first"),
    (lambda s: s.remove_object(99), UnknownObjectError, "unknown object id 99"),
    (lambda s: s.clear_prompts(0, 99), UnknownObjectError, "unknown object id 99"),
    (lambda s: next(s.propagate("sideways")), SessionError, "direction must be"),
    (lambda s: next(s.propagate(start_frame=400)), FrameIndexError, "outside the video"),
])
def test_bad_input_is_rejected_and_session_stays_usable(session, call, error, message):
    session.add_prompt(3, 1, points=[[30, 35]], labels=[1])
    before = session.result(3)
    with pytest.raises(error, match=message):
        call(session)
    after = session.result(3)
    assert after.obj_ids == before.obj_ids == [1]
    assert np.array_equal(after.masks, before.masks)
    assert [r.frame_idx for r in session.propagate(max_frames=2)] == [3, 4, 5]


def test_propagate_without_prompts(session):
    with pytest.raises(SessionError, match="no prompts"):
        session.propagate()


def test_unreadable_videos(model, tmp_path):
    predictor = VideoPredictor(model)
    with pytest.raises(FileNotFoundError):
        predictor.open(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(VideoReadError, match="garbage.mp4"):
        predictor.open(garbage)
    with pytest.raises(ValueError):
        predictor.open([])


def test_absent_object_has_empty_mask_and_negative_score(session):
    r = session.add_prompt(4, "gone", mask=np.zeros((H, W), bool))
    assert not r.masks[0].any() and r.object_scores[0] < 0


def test_mask_prompt_comes_back_on_its_frame(session):
    mask = np.zeros((H, W), bool)
    mask[20:50, 20:50] = True
    r = session.add_prompt(2, 1, mask=mask)
    agreement = (r.masks[0] == mask).mean()
    assert agreement > 0.97  # exact up to the 4x low-res round trip at the edges


def test_propagation_order_and_early_stop(session):
    session.add_prompt(10, 1, box=[15, 20, 55, 50])
    assert [r.frame_idx for r in session.propagate("forward", max_frames=3)] == [10, 11, 12, 13]
    assert [r.frame_idx for r in session.propagate("backward", max_frames=2)] == [10, 9, 8]
    both = [r.frame_idx for r in session.propagate("both", start_frame=12, max_frames=1)]
    assert both == [12, 13, 12, 11]
    frames = session.propagate("forward")
    first = next(frames)
    frames.close()  # the consumer stops: nothing more is computed, the session goes on
    assert first.frame_idx == 10
    assert session.add_prompt(20, 2, points=[[60, 30]], labels=[1]).obj_ids == [1, 2]


def test_refinement_on_a_seen_frame_costs_only_the_decoder(session, monkeypatch):
    session.add_prompt(6, 1, points=[[30, 35]], labels=[1])
    calls = []
    encoder = session.model.image_encoder
    monkeypatch.setattr(encoder, "forward", lambda *a, **k: calls.append(1) or type(encoder).forward(encoder, *a, **k))
    session.add_prompt(6, 1, points=[[60, 40]], labels=[0], clear_old=False)
    session.add_prompt(6, 2, box=[10, 10, 40, 40])
    assert calls == []


def test_objects_are_batched(session, monkeypatch):
    """Decoder and memory encoder take all objects in one pass; on the CPU memory attention runs one object at
    a time (its kernels are faster so), each with its own memories."""
    for obj in range(3):
        session.add_prompt(0, obj, box=[10 + 5 * obj, 20, 40 + 5 * obj, 50])
    calls: dict[str, list[int]] = {"attention": [], "decoder": [], "memory": []}
    model = session.model

    def spy(owner, name, key, batched_arg):
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: calls[key].append(len(a[batched_arg])) or original(*a, **k))

    spy(model.memory_attention, "forward", "attention", 0)  # curr
    spy(model, "predict_masks", "decoder", 0)  # memory-conditioned features
    spy(model, "encode_memory", "memory", 1)  # high-res masks
    results = list(session.propagate(max_frames=4))
    assert [r.masks.shape[0] for r in results] == [3] * 5
    assert calls["decoder"] == [3, 3, 3, 3]  # one batched pass per tracked frame
    assert calls["memory"] == [1, 1, 1, 3, 3, 3, 3]  # the prompted frame of each object, then batched
    assert calls["attention"] == [1] * 12


def test_propagating_some_objects_leaves_the_others_untouched(session):
    """propagate(obj_ids=...) tracks and yields only those objects; the others keep their outputs. forget()
    takes one object's prompt and output off a frame, and a prompt there is then decoded as on a first visit."""
    session.add_prompt(0, "a", box=[10, 20, 40, 50])
    session.add_prompt(0, "b", box=[40, 20, 70, 50])
    list(session.propagate(max_frames=3))
    a_before = {f: session.objects["a"].output(f).obj_ptr.clone() for f in range(4)}
    session.add_prompt(2, "b", points=np.array([[60.0, 30.0]]), labels=np.array([1]))
    results = list(session.propagate(start_frame=2, max_frames=3, obj_ids=["b"]))
    assert [(r.frame_idx, r.obj_ids, r.masks.shape[0]) for r in results] == [(f, ["b"], 1) for f in range(2, 6)]
    assert 4 not in session.objects["a"].tracked and 5 in session.objects["b"].tracked
    for f, ptr in a_before.items():
        assert torch.equal(session.objects["a"].output(f).obj_ptr, ptr)
    first = session.add_prompt(7, "c", box=[20, 20, 50, 50]).masks[-1]
    list(session.propagate(start_frame=7, max_frames=2, obj_ids=["c"]))
    session.add_prompt(8, "c", points=np.array([[30.0, 30.0]]), labels=np.array([1]))
    session.forget(8, "c")
    assert session.objects["c"].output(8) is None and 8 not in session.objects["c"].prompts
    session.forget(7, "c")
    assert np.array_equal(session.add_prompt(7, "c", box=[20, 20, 50, 50]).masks[-1], first)  # as at first
    with pytest.raises(UnknownObjectError):
        session.propagate(obj_ids=["nobody"])


def test_state_stays_bounded_on_long_videos(model):
    """Spatial memories and cached features do not grow with the number of frames tracked; results grow by
    a fixed, small amount per frame (half-precision low-res logits)."""
    stats = {}
    for n in (20, 60):
        s = VideoPredictor(model, feature_cache_bytes=4 << 20).open(MovingSquare(n))
        s.add_prompt(0, 1, box=[10, 20, 40, 50])
        s.add_prompt(0, 2, points=[[30, 30]], labels=[1])
        for _ in s.propagate():
            pass
        stats[n] = s.memory_stats()
        s.close()
    grid = CFG.image_embedding_size
    memory_per_frame = CFG.memory_dim * grid * grid * 2  # bfloat16
    reach = CFG.num_maskmem - 1
    # per object: its prompted frame, the frames within reach of it, and the window behind the front
    assert stats[60]["memories"] == stats[20]["memories"] <= 2 * (1 + reach + (reach + 1)) * memory_per_frame
    assert stats[60]["features"] <= 4 << 20
    per_frame = (stats[60]["results"] - stats[20]["results"]) / 40
    low_res = (4 * grid) ** 2 * 2  # float16
    assert per_frame == pytest.approx(2 * (low_res + CFG.d_model * 4 + 4))


def test_bfloat16_mode(model):
    source = MovingSquare(6)
    masks = {}
    for dtype in (torch.float32, torch.bfloat16):
        s = VideoPredictor(model, dtype=dtype).open(source)
        s.add_prompt(0, 1, box=[10, 20, 40, 50])
        masks[dtype] = np.stack([r.masks for r in s.propagate()])
    ours, ref = masks[torch.bfloat16], masks[torch.float32]
    assert ours.shape == ref.shape
    assert ours.any() and ref.any(), "empty masks would make the comparison meaningless"
    assert region_similarity(ours, ref) > 0.9  # foreground IoU, not pixel share


def test_concurrent_calls(session):
    session.add_prompt(0, 1, box=[10, 20, 40, 50])
    errors = []

    def work(offset):
        try:
            for i in range(3):
                session.add_prompt(5 + offset * 3 + i, 10 + offset, points=[[30, 30]], labels=[1])
                session.result(5 + offset * 3 + i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(session.obj_ids, key=str) == [1, 10, 11, 12]
