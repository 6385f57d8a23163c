"""The `ray` engine on a real Ray on loopback (no mock engine): real Workers (random-weight model, media from
the fake Label Studio) whose ledger is a folder (tests/recording_worker.py), two CPU actors.

- a local Ray started by the engine: specs are shared by the actors, an actor killed with SIGKILL mid-video is
  restarted by Ray and its spec retried through on_outcome: exactly one outcome per attempt, one write per
  task; the restarted actor takes work again; stop_event ends a run mid-video with nothing written;
- `address`: joining a cluster started with `ray start --head` (token authentication on, as Ray 2.60 sets it
  up when a token exists), and a model that cannot load failing every spec once with the reason.
The whole flow with Label Studio and the CLI: tests/e2e/test_e2e_preannotate_ray.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray engine's optional dependency: pip install -r requirements-ray.txt")
import ray  # noqa: E402

from backend.preannotate.engine import EngineError, get_engine  # noqa: E402
from backend.preannotate.ledger import prompt_signature  # noqa: E402
from backend.preannotate.spec import DONE, FAILED, FrameProgress, JobSpec, Outcome  # noqa: E402
from tests.backend_helpers import backend_settings, h264_bytes  # noqa: E402
from tests.fake_label_studio import FakeLabelStudio  # noqa: E402
from tests.live_gunicorn import free_port  # noqa: E402
from tests.recording_worker import RecordingFactory, writes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VIDEO_XML = ('<View><Video name="video" value="$video" framerate="25"/>'
             '<VideoRectangle name="box" toName="video"/></View>')
LONG, SHORT = 150, 10  # frames: the long video is tracked long enough to be killed mid-way


def _region(frames: int) -> dict:
    """A box on the clip's square at frame 1 (tests.backend_helpers.clip_frames: 18 px at x=10, y=16)."""
    item = {"frame": 1, "time": 0.0, "x": 10 / 64 * 100, "y": 16 / 48 * 100, "width": 18 / 64 * 100,
            "height": 18 / 48 * 100, "rotation": 0, "enabled": True}
    return {"id": "obj", "type": "videorectangle", "from_name": "box", "to_name": "video",
            "value": {"framesCount": frames, "duration": frames / 25, "sequence": [item]}}


def _spec(task: int, path: str, frames: int) -> JobSpec:
    regions = [_region(frames)]
    return JobSpec(1, {"id": task, "data": {"video": path}}, VIDEO_XML, regions, "backend_test",
                   prompt_signature(regions))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The fake Label Studio serving a long and a short video; (settings, {task: spec}) of 1 long + 3 short."""
    tmp = tmp_path_factory.mktemp("ray-media")
    with FakeLabelStudio() as ls:
        long_path = ls.add("/data/upload/1/long.mp4", h264_bytes(tmp, LONG))
        short_path = ls.add("/data/upload/1/short.mp4", h264_bytes(tmp, SHORT))
        specs = {1: _spec(1, long_path, LONG)} | {t: _spec(t, short_path, SHORT) for t in (2, 3, 4)}
        yield backend_settings(tmp, ls.url), specs


@pytest.fixture(scope="module", autouse=True)
def ray_token(ray_token_env):
    """Every Ray of this module uses the session's test token (conftest.RAY_TEST_TOKEN)."""
    yield


class Recorder:
    """on_progress / on_outcome of a run, retrying as the runner does (a failed retryable attempt, < 3)."""

    def __init__(self, kill_task: int | None = None, stop_task: int | None = None):
        self.outcomes: list[Outcome] = []
        self.progress: list[FrameProgress] = []
        self.kill_task, self.stop_task = kill_task, stop_task
        self.killed: str | None = None
        self.stop = threading.Event()
        self.specs: dict[int, JobSpec] = {}

    def on_progress(self, report: FrameProgress) -> None:
        self.progress.append(report)
        mid_video = 0 < report.frames_done < report.frames_total
        if report.task_id == self.kill_task and mid_video and self.killed is None:
            self.killed = report.worker
            os.kill(int(report.worker.rsplit(":", 1)[1]), signal.SIGKILL)
        if report.task_id == self.stop_task and mid_video:
            self.stop.set()

    def on_outcome(self, outcome: Outcome) -> JobSpec | None:
        self.outcomes.append(outcome)
        if outcome.status == FAILED and outcome.retryable and outcome.attempt < 3:
            retry = self.specs[outcome.task_id] = self.specs[outcome.task_id].retry()
            return retry
        return None

    def run(self, engine, specs: list[JobSpec], factory) -> None:
        self.specs = {s.task_id: s for s in specs}
        engine.run(specs, factory, self.on_progress, self.on_outcome, self.stop)


def test_local_ray_shares_specs_retries_a_killed_actor_restarts_and_stops(media, tmp_path):
    settings, specs = media
    factory = RecordingFactory(settings, folder=str(tmp_path))
    engine = get_engine("ray", workers=2)
    try:
        rec = Recorder(kill_task=1)
        rec.run(engine, list(specs.values()), factory)
        assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2, "not the engine's local Ray"

        assert rec.killed, "the long video was tracked before its actor could be killed mid-video"
        attempts = sorted((o.task_id, o.attempt, o.status) for o in rec.outcomes)
        assert attempts == [(1, 1, FAILED), (1, 2, DONE), (2, 1, DONE), (3, 1, DONE), (4, 1, DONE)], rec.outcomes
        crashed = next(o for o in rec.outcomes if o.status == FAILED)
        assert crashed.retryable and "Ray actor died" in crashed.error, crashed
        assert {o.task_id: o.frames for o in rec.outcomes if o.status == DONE} == {1: LONG, 2: SHORT, 3: SHORT,
                                                                                     4: SHORT}
        assert writes(tmp_path) == {1: [f"task1-attempt2-pid{_pid(w)}.json" for w in _done_by(rec, 1)],
                                    2: [f"task2-attempt1-pid{_pid(w)}.json" for w in _done_by(rec, 2)],
                                    3: [f"task3-attempt1-pid{_pid(w)}.json" for w in _done_by(rec, 3)],
                                    4: [f"task4-attempt1-pid{_pid(w)}.json" for w in _done_by(rec, 4)]}
        assert _pid(rec.killed) not in {_pid(o.worker) for o in rec.outcomes if o.status == DONE}
        assert any(p.task_id == 1 and 0 < p.frames_done < p.frames_total for p in rec.progress), "no progress relayed"
        for path in tmp_path.glob("task*.json"):
            path.unlink()
        _one_actor(specs, factory, tmp_path)  # on the same Ray (ray.init is the slow part)
    finally:
        engine.close()
    assert not ray.is_initialized(), "close() left the engine's Ray running"


def _one_actor(specs: dict[int, JobSpec], factory, tmp_path: Path) -> None:
    """One actor: after its SIGKILL, Ray's restart of it (a new process) runs the retry and the rest; then
    stop_event ends a run mid-video with nothing written."""
    engine = get_engine("ray", workers=1)  # Ray is up: the engine uses it (and leaves it up on close)
    try:
        rec = Recorder(kill_task=1)
        rec.run(engine, [specs[1], specs[2]], factory)
        assert rec.killed, "the long video was tracked before its actor could be killed mid-video"
        assert sorted((o.task_id, o.attempt, o.status) for o in rec.outcomes) == [(1, 1, FAILED), (1, 2, DONE),
                                                                                  (2, 1, DONE)], rec.outcomes
        (restarted,) = {_pid(o.worker) for o in rec.outcomes if o.status == DONE}
        assert restarted != _pid(rec.killed)
        assert sorted(writes(tmp_path)) == [1, 2]

        # stop_event mid-video: the run returns, the cut task has no outcome and writes nothing
        for path in tmp_path.glob("task*.json"):
            path.unlink()
        rec = Recorder(stop_task=1)
        run = threading.Thread(target=rec.run, args=(engine, [specs[1]], factory))
        run.start()
        run.join(120)
        assert not run.is_alive(), "the run did not return after stop_event"
        assert rec.stop.is_set() and rec.outcomes == [] and writes(tmp_path) == {}, rec.outcomes
    finally:
        engine.close()
    assert ray.is_initialized(), "an engine that joined a running Ray shut it down"


def _pid(worker: str) -> int:
    return int(worker.rsplit(":", 1)[1])


def _done_by(rec: Recorder, task: int) -> list[str]:
    return [o.worker for o in rec.outcomes if o.task_id == task and o.status == DONE]


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        assert proc.poll() is None, "ray start --head ended"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("ray start --head did not listen")


@pytest.fixture
def head(tmp_path):
    """`ray start --head --block` on loopback: this test's own cluster (SIGTERM stops it and its processes;
    `ray stop` would stop every Ray on the machine). Its GCS address."""
    port = free_port()
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    log = open(tmp_path / "ray-head.log", "w")
    proc = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                             f"--object-store-memory={128 * 1024 * 1024}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_joins_a_cluster_started_with_ray_start(media, head, tmp_path):
    settings, specs = media
    engine = get_engine("ray", workers=2, address=head)  # RAY_AUTH_MODE unset: the engine joins with the token
    try:
        # Ray names the node by its address (127.0.0.1 becomes the host's IP): the port is the cluster's own
        assert ray.get_runtime_context().gcs_address.endswith(head[head.rindex(":"):]), "not the given cluster"
        rec = Recorder()
        rec.run(engine, [specs[2], specs[3]], RecordingFactory(settings, folder=str(tmp_path)))
        assert sorted((o.task_id, o.status) for o in rec.outcomes) == [(2, DONE), (3, DONE)], rec.outcomes
        assert sorted(writes(tmp_path)) == [2, 3]

        rec = Recorder()  # a model that cannot load: every spec fails once, with the reason, not retried
        missing = RecordingFactory(settings.__class__(**{**vars(settings), "sam2_checkpoint": "/nope/missing.pt"}),
                                   folder=str(tmp_path))
        rec.run(engine, [specs[2], specs[3]], missing)
        assert sorted(o.task_id for o in rec.outcomes) == [2, 3], rec.outcomes
        assert all(o.status == FAILED and not o.retryable and "cannot start" in o.error and "missing.pt" in o.error
                   for o in rec.outcomes), rec.outcomes
    finally:
        engine.close()
    assert not ray.is_initialized()


def test_bad_engine_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="at least 1"):
        get_engine("ray", workers=0)
    with pytest.raises(TypeError):
        get_engine("ray", workers=1, adress="typo")
    with pytest.raises(EngineError, match="nothing answers"):  # at once, not after Ray's minutes of retries
        get_engine("ray", workers=1, address=f"127.0.0.1:{free_port()}")
    assert not ray.is_initialized()
