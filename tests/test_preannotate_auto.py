"""AUTO_MASKLETS through the pre-annotation job path: Runner.plan -> engine -> real Worker (random-weight model,
media from the fake Label Studio) -> LabelStudioLedger, whose SDK client is an in-memory Label Studio
(`MemoryClient`: the projects / tasks / predictions calls the ledger makes). Video, image sequence and single
image; idempotence (a rerun writes nothing), changed AUTO_* settings, a task that later gets prompts, bad
AUTO_LABEL (the job stops at its start, POST /preannotate 422) and a mask control without labels (the task
fails with the reason); the local engine's spawned workers and the ray engine's actors run automatic specs too;
batch /predict queues prompt-less tasks, interactive /predict without prompts still answers nothing. Discovery
uses loosened generator thresholds (random weights score low), so these tests check structure, that regions
were found, and (image sequence) that they are the objects and frames a direct track_everything run gives."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import threading
from types import SimpleNamespace

import pytest

from backend.app import create_app
from backend.automatic import AUTOMATIC, AutoOptions
from backend.labelconfig import LabelConfigError
from backend.preannotate.engine import get_engine
from backend.preannotate.journal import Journal
from backend.preannotate.ledger import SIGNATURE_KEY, LabelStudioLedger, stored_signature
from backend.preannotate.runner import NO_PROMPTS, Runner
from backend.preannotate.spec import DONE, FAILED, UNCHANGED
from backend.preannotate.worker import WorkerFactory
from config.settings import Settings, SettingsError
from sam2_model import load_model
from sam2_model.video.discovery import track_everything
from sam2_model.video.predictor import VideoPredictor
from tests.backend_helpers import SEQ_XML, backend_settings, captured, clip_frames, h264_bytes, png_bytes
from tests.fake_label_studio import FakeLabelStudio
from tests.recording_worker import RecordingFactory, writes

N = 10  # frames of the clip and of the image sequence
W, H = 64, 48
VIDEO_XML = ('<View><Video name="video" value="$video" framerate="25"/>'
             '<Labels name="lab" toName="video"><Label value="Thing"/><Label value="Car"/></Labels>'
             '<VideoRectangle name="box" toName="video"/></View>')
IMAGE_XML = ('<View><Image name="image" value="$image"/>'
             '<BrushLabels name="brush" toName="image"><Label value="Stuff"/><Label value="Car"/></BrushLabels></View>')
NO_LABEL_XML = '<View><Image name="image" value="$image"/><BrushLabels name="brush" toName="image"/></View>'
LOOSE = dict(auto_masklets=True, auto_points_per_side=4, auto_pred_iou_thresh=0.0, auto_stability_thresh=0.0,
             auto_every=4, auto_max_objects=3)


class MemoryClient:
    """The label_studio_sdk calls LabelStudioLedger makes, over in-memory projects and tasks."""

    def __init__(self, configs: dict[int, str], tasks: dict[int, dict]):
        self.tasks_by_id = tasks
        self.created: list[int] = []  # ids of every prediction created
        ids = itertools.count(1)

        def create(task, result, score, model_version):
            pid = next(ids)
            self.tasks_by_id[task].setdefault("predictions", []).append(
                {"id": pid, "task": task, "result": copy.deepcopy(result), "score": score,
                 "model_version": model_version})
            self.created.append(pid)
            return SimpleNamespace(id=pid)

        def delete(id):
            for t in self.tasks_by_id.values():
                t["predictions"] = [p for p in t.get("predictions") or [] if p["id"] != id]

        self.projects = SimpleNamespace(get=lambda id: SimpleNamespace(label_config=configs[id]))
        self.tasks = SimpleNamespace(
            list=lambda project, fields: [copy.deepcopy(t) for t in tasks.values() if t["project"] == project],
            get=lambda id: copy.deepcopy(tasks[id]))
        self.predictions = SimpleNamespace(
            list=lambda task: copy.deepcopy(tasks[task].get("predictions") or []), create=create, delete=delete)


class InlineEngine:
    """The engine contract in this process (one Worker, the test's ledger), so a test needs no spawn."""

    name = "inline"

    def __init__(self, ledger: LabelStudioLedger):
        self.ledger = ledger

    def run(self, specs, worker_factory, on_progress, on_outcome, stop_event) -> None:
        worker = worker_factory(None)
        worker.ledger = self.ledger
        worker.setup()
        todo = list(specs)
        while todo and not stop_event.is_set():
            retry = on_outcome(worker.run(todo.pop(0), on_progress))
            if retry is not None:
                todo.append(retry)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """(tmp, fake Label Studio url, task data by kind) for a video, an image sequence and an image."""
    tmp = tmp_path_factory.mktemp("auto")
    frames = clip_frames(N, W, H)
    with FakeLabelStudio() as ls:
        sequence = [ls.add(f"/data/upload/2/f{i}.png", png_bytes(f)) for i, f in enumerate(frames)]
        data = {"video": {"video": ls.add("/data/upload/1/clip.mp4", h264_bytes(tmp, N))},
                "sequence": {"frames": sequence},
                "image": {"image": ls.add("/data/upload/3/img.png", png_bytes(frames[0]))}}
        yield tmp, ls.url, data


def _project(media, kind: str, xml: str, tmp_path, **changes):
    """(runner, client, settings) of a project 1 of one task (id 1) holding `kind`'s media and no prompt."""
    tmp, url, data = media
    settings = backend_settings(tmp, url, **{**LOOSE, "preannotate_state_dir": str(tmp_path / "state"), **changes})
    client = MemoryClient({1: xml}, {1: {"id": 1, "project": 1, "data": data[kind], "annotations": [],
                                         "predictions": []}})
    ledger = LabelStudioLedger(url, "token", client=client)
    runner = Runner(settings, ledger, Journal(tmp_path / "state"), InlineEngine(ledger), version="backend_test")
    return runner, client, settings


def _run(runner: Runner, settings, **plan_options):
    plan = runner.plan(1, **plan_options)
    return plan, runner.run(plan, WorkerFactory(settings), threading.Event())


def _stored(client: MemoryClient) -> list[dict]:
    return client.tasks_by_id[1]["predictions"]


def _check_scores(result: list[dict]) -> None:
    assert all(0.0 <= r["score"] <= 1.0 for r in result), [r.get("score") for r in result]


def test_video_tracks_discovered_objects_once_and_gives_way_to_prompts(media, tmp_path):
    runner, client, settings = _project(media, "video", VIDEO_XML, tmp_path)
    plan, summary = _run(runner, settings)
    assert [(s.source, s.signature) for s in plan.specs] == [(AUTOMATIC, AutoOptions.from_settings(settings)
                                                              .signature())]
    assert [(line.status, line.frames) for line in summary.lines] == [(DONE, N)], summary.lines
    [pred] = _stored(client)
    result = pred["result"]
    assert 1 <= len(result) <= LOOSE["auto_max_objects"], "discovery found no object (or passed the cap)"
    _check_scores(result)
    assert pred["model_version"] == "backend_test" and stored_signature(pred).startswith("auto-")
    for region in result:
        assert region["type"] == "videorectangle" and region["from_name"] == "box" and region["to_name"] == "video"
        assert region["value"]["labels"] == ["Thing"], "the default label is the <Labels>' first"
        assert region["value"]["framesCount"] == N and region["origin"] == "prediction"
        frames = [k["frame"] for k in region["value"]["sequence"]]
        assert frames == sorted(frames) and 1 <= frames[0] <= N and frames[-1] <= N
    assert any(r["value"]["sequence"][0]["frame"] == 1 for r in result), "nothing discovered on the first frame"
    covered, scores = _direct_discovery(settings, str(media[0] / "clip.mp4"))  # editor frame f = decoded f - 1
    first = {obj: min(f for o, f in covered if o == obj) + 1 for obj, _ in covered}
    assert {r["id"]: r["value"]["sequence"][0]["frame"] for r in result} == first, "not the objects discovery found"
    assert {r["id"]: r["score"] for r in result} == pytest.approx(scores)

    _, again = _run(runner, settings)
    assert [line.status for line in again.lines] == [UNCHANGED] and len(client.created) == 1, "a rerun wrote"

    runner.settings = settings = dataclasses.replace(settings, auto_label="Car")
    _, relabelled = _run(runner, settings)
    assert [line.status for line in relabelled.lines] == [DONE], "changed AUTO_* settings are a new key"
    [pred] = _stored(client)
    assert {tuple(r["value"]["labels"]) for r in pred["result"]} == {("Car",)}

    prompt = {"id": "p1", "type": "videorectangle", "from_name": "box", "to_name": "video",
              "value": {"framesCount": N, "duration": N / 25, "labels": ["Car"], "sequence": [
                  {"frame": 1, "time": 0.0, "x": 15.0, "y": 33.0, "width": 28.0, "height": 37.0, "rotation": 0,
                   "enabled": True}]}}
    client.tasks_by_id[1]["annotations"] = [{"id": 9, "result": [prompt], "created_at": "2026-12-04"}]
    plan, prompted = _run(runner, settings)
    assert [s.source for s in plan.specs] == ["annotation"] and [line.status for line in prompted.lines] == [DONE]
    [pred] = _stored(client)
    assert not stored_signature(pred).startswith("auto-"), "the prompted prediction did not replace the automatic"
    assert [r["id"] for r in pred["result"]] == ["p1"]


def test_image_sequence_brush_masks_per_frame(media, tmp_path):
    runner, client, settings = _project(media, "sequence", SEQ_XML, tmp_path)
    _, summary = _run(runner, settings)
    assert [(line.status, line.frames) for line in summary.lines] == [(DONE, N)], summary.lines
    [pred] = _stored(client)
    result = pred["result"]
    assert result, "discovery found no object"
    _check_scores(result)
    objects = {r["parentID"] for r in result}
    assert 1 <= len(objects) <= LOOSE["auto_max_objects"]
    for region in result:
        assert region["type"] == "brushlabels" and region["from_name"] == "brush" and region["to_name"] == "frames"
        assert region["value"]["brushlabels"] == ["Car"] and region["value"]["format"] == "rle"
        assert 0 <= region["item_index"] < N and (region["original_width"], region["original_height"]) == (W, H)
        assert region[SIGNATURE_KEY] == stored_signature(pred)
    assert 0 in {r["item_index"] for r in result}, "nothing on the first frame, where discovery starts"
    for obj in objects:  # one score per object: its mask's predicted IoU at discovery
        assert len({r["score"] for r in result if r["parentID"] == obj}) == 1
    covered, scores = _direct_discovery(settings, clip_frames(N, W, H))
    assert {(r["parentID"], r["item_index"]) for r in result} == covered, "not the frames discovery covers"
    assert {r["parentID"]: r["score"] for r in result} == pytest.approx(scores)


def _direct_discovery(settings, source) -> tuple[set[tuple[str, int]], dict[str, float]]:
    """track_everything run directly on `source` (frames or a video file) with the job's model and AUTO_* options:
    ({(object, frame) where the object is present with a non-empty mask}, {object: predicted IoU})."""
    model = load_model(settings.sam2_checkpoint).eval()
    options = AutoOptions.from_settings(settings)
    session = VideoPredictor(model).open(source)
    covered, scores = set(), {}
    try:
        for result, found in track_everything(session, options.generator(model), every=options.every,
                                              max_objects=options.max_objects, end_after=options.end_after or None):
            scores.update({f"auto{d.obj_id}": d.record["predicted_iou"] for d in found})
            covered |= {(f"auto{i}", result.frame_idx) for i, m, score in
                        zip(result.obj_ids, result.masks, result.object_scores) if score > 0 and m.any()}
    finally:
        session.close()
    return covered, scores


def test_image_brush_masks_and_bad_configs(media, tmp_path):
    runner, client, settings = _project(media, "image", IMAGE_XML, tmp_path)
    _, summary = _run(runner, settings)
    assert [(line.status, line.frames) for line in summary.lines] == [(DONE, 1)], summary.lines
    [pred] = _stored(client)
    result = pred["result"]
    assert 1 <= len(result) <= LOOSE["auto_max_objects"]
    _check_scores(result)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True), "best predicted IoU first"
    for region in result:
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Stuff"]
        assert "item_index" not in region and (region["original_width"], region["original_height"]) == (W, H)

    bad, _, bad_settings = _project(media, "image", IMAGE_XML, tmp_path / "bad", auto_label="Truck")
    with pytest.raises(LabelConfigError, match=r"AUTO_LABEL 'Truck' is not a label of <BrushLabels "
                                               r'name="brush"> \(labels: Stuff, Car\)'):
        bad.plan(1)

    unlabelled, client, settings = _project(media, "image", NO_LABEL_XML, tmp_path / "nolabel")
    _, summary = _run(unlabelled, settings)
    [line] = summary.lines
    assert line.status == FAILED and "has no <Label>" in line.detail and line.attempts == 1, line
    assert _stored(client) == []

    off, _, settings = _project(media, "image", IMAGE_XML, tmp_path / "off", auto_masklets=False)
    plan = off.plan(1)
    assert not plan.specs and [line.status for line in plan.lines.values()] == [NO_PROMPTS], "off by default"


@pytest.mark.parametrize("engine_name", ["local", "ray"])
def test_engines_workers_run_automatic_specs(media, tmp_path, engine_name, request):
    if engine_name == "ray":
        pytest.importorskip("ray", reason="the ray engine's optional dependency: pip install -r requirements-ray.txt")
        request.getfixturevalue("ray_token_env")  # the token every in-process Ray of the session uses
    runner, _, settings = _project(media, "video", VIDEO_XML, tmp_path)
    plan = runner.plan(1)
    outcomes = []
    engine = get_engine(engine_name, workers=1)
    try:
        engine.run(plan.specs, RecordingFactory(settings, folder=str(tmp_path)), lambda p: None,
                   lambda o: outcomes.append(o), threading.Event())
    finally:
        engine.close()
    assert [(o.status, o.frames) for o in outcomes] == [(DONE, N)] and outcomes[0].objects >= 1, outcomes
    assert list(writes(tmp_path)) == [1]


class SubmittedJobs:
    """Stands in for the backend's JobManager: records what /predict queues."""

    def __init__(self):
        self.submitted: list[tuple] = []

    def submit(self, project, tasks, origin, credentials=(None, None)) -> str:
        self.submitted.append((project, tasks, origin))
        return "job1"

    def close(self, terminate: bool = False) -> None:
        pass


def test_batch_predict_queues_promptless_tasks_interactive_answers_nothing(media, tmp_path):
    tmp, url, _ = media
    for auto in (False, True):
        settings = backend_settings(tmp, url, auto_masklets=auto, preannotate_state_dir=str(tmp_path / "state"))
        app = create_app(settings)
        backend = app.extensions["sam2_backend"]
        backend._jobs = jobs = SubmittedJobs()
        client = app.test_client()
        try:
            batch = client.post("/predict", json=captured("predict_batch"))
            assert batch.status_code == 200 and batch.get_json()["results"] == [[]], batch.get_json()
            assert jobs.submitted == ([(1, [1], "predict")] if auto else []), jobs.submitted
            interactive = captured("predict_interactive")
            interactive["params"]["context"]["result"] = []
            answer = client.post("/predict", json=interactive)
            assert answer.status_code == 200 and answer.get_json()["results"][0]["result"] == [], answer.get_json()
            assert len(jobs.submitted) == (1 if auto else 0), "an interactive request queued a job"
        finally:
            backend.close()


def test_post_preannotate_refuses_an_auto_label_the_config_lacks(media, tmp_path, monkeypatch):
    tmp, url, _ = media
    monkeypatch.setattr(LabelStudioLedger, "label_config", lambda self, project: IMAGE_XML)
    settings = backend_settings(tmp, url, auto_masklets=True, auto_label="Truck",
                                preannotate_state_dir=str(tmp_path / "state"))
    app = create_app(settings)
    backend = app.extensions["sam2_backend"]
    backend._jobs = jobs = SubmittedJobs()
    try:
        answer = app.test_client().post("/preannotate", json={"project": 1})
        assert answer.status_code == 422 and "AUTO_LABEL 'Truck' is not a label" in answer.get_json()["error"]
        assert jobs.submitted == [], "a job was queued"
    finally:
        backend.close()


def test_auto_settings_are_checked_and_all_in_the_signature():
    assert Settings().auto_masklets is False, "AUTO_MASKLETS must be off by default"
    for name, bad in [("AUTO_EVERY", "0"), ("AUTO_MAX_OBJECTS", "0"), ("AUTO_END_AFTER", "-1"),
                      ("AUTO_POINTS_PER_SIDE", "0"), ("AUTO_PRED_IOU_THRESH", "1.5"), ("AUTO_STABILITY_THRESH", "-0.1"),
                      ("AUTO_MASKLETS", "maybe")]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: bad})
    base = AutoOptions()
    changed = [dataclasses.replace(base, **{f.name: value}) for f, value in zip(
        dataclasses.fields(AutoOptions), ("Car", 5, 3, 0, 8, 0.5, 0.5))]
    signatures = {o.signature() for o in [base, *changed]}
    assert len(signatures) == 1 + len(dataclasses.fields(AutoOptions)), "an option left out of the signature"
    assert all(s.startswith("auto-") for s in signatures) and AutoOptions().signature() == base.signature()
