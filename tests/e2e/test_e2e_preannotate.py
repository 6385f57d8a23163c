"""Pre-annotating a whole project end to end: the real Label Studio 1.23.2, `python -m backend.preannotate`
with the local engine (2 spawned workers, the random-weight E2E model), six short videos.

The project: keyframe annotations on different frames (first, middle, last; one task with two objects),
one task prompted only by an imported detector prediction, one without prompts, one whose media is missing.
A worker is killed with SIGKILL while it tracks the longest video. Checked: every prompted task ends with
exactly one prediction of the backend's model version, tracked over its whole video; the rerun writes
nothing; the summary names the broken task; no annotation is written or changed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from backend.preannotate import cli
from backend.preannotate.journal import Journal
from backend.preannotate.ledger import SIGNATURE_KEY
from sam2_model.train.synthetic import generate_clip
from sam2_model.video.frames import write_h264
from tests.e2e.projects import FPS, VIDEO_CONFIG, prediction_errors, videorectangle_keyframe
from tests.e2e.fault_proxy import FaultProxy
from tests.live_gunicorn import free_port, gunicorn_server

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SIZE = (48, 64)  # (height, width): tiny frames, the model works at 128 px anyway
LONG = 90  # frames of the video during which a worker is killed
MODEL_VERSION = "e2e_random"  # the checkpoint's file stem: what the backend answers as model_version


@dataclass
class Video:
    name: str
    frames: int
    task: int = 0
    keyframes: tuple[tuple[int, int], ...] = ()  # (1-based frame, object index) of the user's keyframes
    detector: bool = False  # prompted by an imported prediction only
    broken: bool = False


def _videos() -> list[Video]:
    return [Video("first", 8, keyframes=((1, 0),)), Video("middle", 10, keyframes=((5, 0),)),
            Video("long", LONG, keyframes=((LONG, 0), (30, 1))), Video("detector", 8, detector=True),
            Video("unprompted", 8), Video("broken", 8, broken=True)]


def _box_region(clip, frame: int, obj: int, frames: int) -> dict:
    return videorectangle_keyframe(frame, clip.boxes()[frame - 1, obj], region_id=f"obj{obj}", frame_size=SIZE,
                                   frames_count=frames)


@pytest.fixture(scope="module")
def project(label_studio, tmp_path_factory):
    """The six tasks, annotated; {name: Video} with task ids, and the project id."""
    api = label_studio.api
    folder = tmp_path_factory.mktemp("preannotate-media")
    project_id = api.create_project("pre-annotate", VIDEO_CONFIG)["id"]
    videos = {}
    for seed, video in enumerate(_videos()):
        clip = generate_clip(seed, num_frames=video.frames, size=SIZE, num_objects=2, fps=FPS)
        if video.broken:
            (task,) = api.import_tasks(project_id, [{"video": "/static/missing-video.mp4"}])[-1:]
        else:
            path = folder / f"{video.name}.mp4"
            write_h264(path, clip.frames, FPS)
            task = api.import_file(project_id, path)[-1]
        video.task = task["id"]
        regions = [_box_region(clip, f, o, video.frames) for f, o in video.keyframes or ((1, 0),)]
        if video.detector:
            api.create_prediction(video.task, regions, model_version="detector")
        elif video.keyframes or video.broken:
            api.request("POST", f"/api/tasks/{video.task}/annotations", json={"result": regions})
        videos[video.name] = video
    return project_id, videos


def _run_cli(label_studio, checkpoint: Path, state: Path, project_id: int, *args: str, log: Path,
             kill_during: int | None = None, interrupt: bool = False, **env_over: str) -> tuple[int, str, bool]:
    """Run the CLI to its end; with kill_during, SIGKILL the worker tracking that task once, mid-video
    (interrupt: Ctrl-C the CLI then instead).
    env_over: environment variables over the defaults. (exit status, stdout + stderr, whether a worker was
    killed)."""
    env = dict(os.environ, SAM2_CHECKPOINT=str(checkpoint), DEVICE="cpu", LABEL_STUDIO_URL=label_studio.url,
               LABEL_STUDIO_API_KEY=label_studio.token, PROMPT_SOURCES="annotation,prediction",
               PREANNOTATE_STATE_DIR=str(state), MEDIA_CACHE_DIR=str(state / "media"), LOG_LEVEL="INFO")
    env.update(env_over)
    proc = subprocess.Popen([sys.executable, "-m", "backend.preannotate", "--project", str(project_id), "--quiet",
                             *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = threading.Event()
    if kill_during is not None:
        threading.Thread(target=_kill_mid_video, args=(state, project_id, kill_during, proc, killed, interrupt),
                         daemon=True).start()
    out, err = proc.communicate(timeout=240)
    log.write_text(out + err)
    return proc.returncode, out + err, killed.is_set()


def _kill_mid_video(state: Path, project_id: int, task: int, proc: subprocess.Popen, killed: threading.Event,
                    interrupt: bool = False):
    """SIGKILL the worker tracking `task` (interrupt: SIGINT the CLI instead) once the journal shows it
    mid-video."""
    journal = None
    while proc.poll() is None:
        try:
            journal = journal or Journal(state)
            row = journal.task(project_id, task)
        except Exception:  # the CLI has not created the journal yet
            row = None
        if row is not None and row["status"] == "running" and row["worker"] \
                and 0 < row["frames_done"] < row["frames_total"]:
            if interrupt:
                proc.send_signal(signal.SIGINT)
            else:
                os.kill(int(row["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
            killed.set()
            return
        time.sleep(0.05)


def _annotations(api, task: int) -> list[tuple[int, list]]:
    """(id, result) of the task's annotations."""
    return [(a["id"], a["result"]) for a in api.task(task)["annotations"]]


def _ours(api, task: int) -> list[dict]:
    return [p for p in api.predictions(task) if p["model_version"] == MODEL_VERSION]


def _one_complete_prediction_each(api, videos, journal: Journal, project_id: int) -> dict[int, int]:
    """Assert every prompted task holds exactly one valid prediction of ours covering its whole video (tracked to
    the end in the journal) and the broken and unprompted tasks none; {task: prediction id}."""
    first_ids = {}
    for video in videos.values():
        ours = _ours(api, video.task)
        if video.broken or video.name == "unprompted":
            assert ours == [], f"{video.name}: {ours}"
            continue
        assert len(ours) == 1, f"{video.name}: {len(ours)} predictions of {MODEL_VERSION}"
        (prediction,) = ours
        assert not prediction_errors(VIDEO_CONFIG, prediction)
        assert prediction["result"] and all(r[SIGNATURE_KEY] for r in prediction["result"])
        assert {r["value"]["framesCount"] for r in prediction["result"]} == {video.frames}
        row = journal.task(project_id, video.task)
        assert row["frames_done"] == video.frames, f"{video.name}: tracked {row['frames_done']} of {video.frames}"
        first_ids[video.task] = prediction["id"]
    return first_ids


def test_cli_preannotates_a_project(label_studio, project, e2e_checkpoint, tmp_path, artifacts):
    api = label_studio.api
    project_id, videos = project
    annotations = {v.task: _annotations(api, v.task) for v in videos.values()}
    state = tmp_path / "state"

    code, out, killed = _run_cli(label_studio, e2e_checkpoint, state, project_id, "--workers", "2",
                                 kill_during=videos["long"].task, log=artifacts / "preannotate-run1.log")
    assert killed, "the long video was tracked before a worker could be killed mid-video"
    assert code == 1, out  # the broken task failed
    broken = videos["broken"].task
    assert f"task {broken}: task media" in out and "not found" in out, out

    journal = Journal(state)
    first_ids = _one_complete_prediction_each(api, videos, journal, project_id)
    assert journal.task(project_id, videos["long"].task)["attempts"] == 2  # killed once, then done

    code, out, _ = _run_cli(label_studio, e2e_checkpoint, state, project_id, log=artifacts / "preannotate-run2.log")
    assert code == 1 and "not found" in out, out
    for task, prediction_id in first_ids.items():
        assert [p["id"] for p in _ours(api, task)] == [prediction_id], "the rerun wrote a prediction"
    assert out.count(" unchanged ") == len(first_ids), out

    # new prompts on the long video; Ctrl-C mid-video: the old prediction stays, the rerun replaces it
    long = videos["long"]
    ((annotation_id, result),) = annotations[long.task]
    moved = [dict(r, value=dict(r["value"], sequence=[dict(k, x=k["x"] + 1) for k in r["value"]["sequence"]]))
             for r in result]
    api.request("PATCH", f"/api/annotations/{annotation_id}", json={"result": moved})
    code, out, interrupted = _run_cli(label_studio, e2e_checkpoint, state, project_id, "--tasks", str(long.task),
                                      kill_during=long.task, interrupt=True, log=artifacts / "preannotate-run3.log")
    assert interrupted and code == 130 and "stopped" in out, out
    assert [p["id"] for p in _ours(api, long.task)] == [first_ids[long.task]], "a cut track was written"
    code, out, _ = _run_cli(label_studio, e2e_checkpoint, state, project_id, "--tasks", str(long.task),
                            log=artifacts / "preannotate-run4.log")
    assert code == 0, out
    (prediction,) = _ours(api, long.task)
    assert prediction["id"] != first_ids[long.task] and journal.task(project_id, long.task)["frames_done"] == LONG
    for video in videos.values():
        if video is not long:
            assert _annotations(api, video.task) == annotations[video.task], "an annotation changed"


# ---------------------------------------------------------------- HTTP: Retrieve Predictions, webhooks, jobs


def _wait(what: str, check, timeout_s: float = 150.0):
    """Poll `check()` until it returns something truthy; that value."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _signature(prediction: dict) -> str:
    return prediction["result"][0][SIGNATURE_KEY]


@pytest.fixture(scope="module")
def job_backend(label_studio, e2e_checkpoint, tmp_path_factory, artifacts):
    """Our backend under gunicorn with a batch budget too small for any tracking: every task of a Retrieve
    Predictions is queued as a pre-annotation job."""
    folder = tmp_path_factory.mktemp("job-backend")
    port = free_port()
    env = {"SAM2_CHECKPOINT": str(e2e_checkpoint), "DEVICE": "cpu", "PORT": str(port), "WORKERS": "1",
           "THREADS": "4", "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "MEDIA_CACHE_DIR": str(folder / "media"), "PREANNOTATE_STATE_DIR": str(folder / "state"),
           "PREDICT_BUDGET_S": "0.001", "PREANNOTATE_WORKERS": "1", "LOG_LEVEL": "INFO"}
    with gunicorn_server(port, env, artifacts / "preannotate-backend.log", timeout_s=60):
        yield f"http://127.0.0.1:{port}"


def test_retrieve_predictions_webhooks_and_jobs(label_studio, job_backend, tmp_path):
    api = label_studio.api
    project_id = api.create_project("pre-annotate over HTTP", VIDEO_CONFIG)["id"]
    tasks, clips = [], []
    for seed in range(3):
        clip = generate_clip(10 + seed, num_frames=8, size=SIZE, num_objects=2, fps=FPS)
        write_h264(tmp_path / f"v{seed}.mp4", clip.frames, FPS)
        tasks.append(api.import_file(project_id, tmp_path / f"v{seed}.mp4")[-1]["id"])
        clips.append(clip)
    first = {t: api.request("POST", f"/api/tasks/{t}/annotations", json={"result": [_box_region(c, 2, 0, 8)]}).json()
             for t, c in zip(tasks[:2], clips)}
    ml = api.connect_ml_backend(project_id, job_backend, title="SAM 2 jobs")
    assert ml["readable_state"] == "Connected", ml

    # Retrieve Predictions: the budget finishes nothing; Label Studio stores nothing, the job writes later
    assert api.retrieve_predictions(project_id, tasks[:2])["processed_items"] == 2
    assert [api.predictions(t) for t in tasks[:2]] == [[], []], "a cut or empty prediction was stored"
    metrics = requests.get(f"{job_backend}/metrics", timeout=10).json()
    assert metrics["counters"]["tasks_queued"] == 2
    for task in tasks[:2]:
        (prediction,) = _wait(f"task {task}'s prediction", lambda t=task: _ours(api, t))
        assert {r["value"]["framesCount"] for r in prediction["result"]} == {8}

    # webhooks: an updated annotation replaces the prediction, a new one gets one
    old = _signature(_ours(api, tasks[0])[0])
    moved = _box_region(clips[0], 6, 0, 8)
    api.request("PATCH", f"/api/annotations/{first[tasks[0]]['id']}", json={"result": [moved]})
    api.request("POST", f"/api/tasks/{tasks[2]}/annotations", json={"result": [_box_region(clips[2], 8, 1, 8)]})
    _wait("the replaced prediction", lambda: [p for p in _ours(api, tasks[0]) if _signature(p) != old])
    _wait(f"task {tasks[2]}'s prediction", lambda: _ours(api, tasks[2]))
    for task in tasks:
        assert len(_ours(api, task)) == 1, f"task {task}: {len(_ours(api, task))} predictions"

    # POST /preannotate: everything is up to date, the job writes nothing
    answer = requests.post(f"{job_backend}/preannotate", json={"project": project_id}, timeout=30)
    assert answer.status_code == 202, answer.text
    status_url = job_backend + answer.json()["status"]
    job = _wait("the job's end", lambda: (lambda j: j if j["state"] not in ("queued", "running") else None)(
        requests.get(status_url, timeout=10).json()))
    assert job["state"] == "done" and job["summary"]["counts"] == {"unchanged": 3}, job

    # bad input: 4xx JSON saying what is wrong
    for body, status, words in [({"project": 999999}, 404, "not found"), ({"project": "one"}, 400, "must be int"),
                                ({"project": project_id, "tasks": []}, 400, "empty")]:
        answer = requests.post(f"{job_backend}/preannotate", json=body, timeout=30)
        assert answer.status_code == status and words in answer.json()["error"], (body, answer.text)
    assert requests.get(f"{job_backend}/preannotate/nope", timeout=10).status_code == 404


# ---------------------------------------------------------------- faults and bad input


def _small_project(api, tmp_path: Path, title: str, n: int = 2, frames: int = 8) -> list[int]:
    """A video project of `n` annotated tasks (one keyframe each); the task ids."""
    project_id = api.create_project(title, VIDEO_CONFIG)["id"]
    tasks = []
    for seed in range(n):
        clip = generate_clip(20 + seed, num_frames=frames, size=SIZE, num_objects=1, fps=FPS)
        write_h264(tmp_path / f"{title}-{seed}.mp4", clip.frames, FPS)
        task = api.import_file(project_id, tmp_path / f"{title}-{seed}.mp4")[-1]["id"]
        api.request("POST", f"/api/tasks/{task}/annotations", json={"result": [_box_region(clip, 1, 0, frames)]})
        tasks.append(task)
    return tasks


def test_label_studio_down_then_429_while_writing(label_studio, e2e_checkpoint, tmp_path, artifacts):
    """Label Studio goes down for 20 s as the first prediction is written, then answers 429 twice: the
    writes wait (backoff) and every task ends with exactly one prediction."""
    api = label_studio.api
    tasks = _small_project(api, tmp_path, "faults")
    project_id = api.task(tasks[0])["project"]
    state = {"down_until": None, "throttled": 0}

    def rule(method: str, path: str):
        now = time.monotonic()
        if state["down_until"] is None and method == "POST" and path.startswith("/api/predictions"):
            state["down_until"] = now + 20.0
        if state["down_until"] is not None and now < state["down_until"]:
            return "drop"
        if state["down_until"] is not None and method == "POST" and path.startswith("/api/predictions") \
                and state["throttled"] < 2:
            state["throttled"] += 1
            return 429
        return None

    with FaultProxy(label_studio.url, rule) as proxy:
        code, out, _ = _run_cli(label_studio, e2e_checkpoint, tmp_path / "state", project_id,
                                log=artifacts / "preannotate-faults.log", LABEL_STUDIO_URL=proxy.url)
    assert code == 0, out
    assert proxy.count("drop") >= 3 and proxy.count("429") == 2, proxy.log
    assert "retrying in" in out and "HTTP 429" in out, out
    for task in tasks:
        assert len(_ours(api, task)) == 1, f"task {task}: {_ours(api, task)}"


def test_cli_bad_input(label_studio, e2e_checkpoint, tmp_path, monkeypatch, capsys):
    """Clear messages, exit status 2 for what stops the whole job, a per-task reason for a too long video;
    nothing retried, no annotation changed. (The CLI runs in this process: no interpreter start per case.)"""
    api = label_studio.api
    state = tmp_path / "state"
    (long_task,) = _small_project(api, tmp_path, "too-long", n=1, frames=12)
    project_id = api.task(long_task)["project"]
    text = api.create_project("text", '<View><Text name="t" value="$text"/>'
                                      '<Choices name="c" toName="t"><Choice value="a"/></Choices></View>')["id"]
    for key, value in {"SAM2_CHECKPOINT": str(e2e_checkpoint), "DEVICE": "cpu", "LABEL_STUDIO_URL": label_studio.url,
                       "LABEL_STUDIO_API_KEY": label_studio.token, "PREANNOTATE_STATE_DIR": str(state),
                       "MEDIA_CACHE_DIR": str(state / "media")}.items():
        monkeypatch.setenv(key, value)
    cases = [(["--project", "999999"], {}, 2, "not found"),
             (["--project", str(project_id)], {"LABEL_STUDIO_API_KEY": "0" * 40}, 2, "refused the token"),
             (["--project", str(text)], {}, 2, "unsupported label config"),
             (["--project", str(project_id)], {"PROMPT_SOURCES": "annotation,guess"}, 2, "PROMPT_SOURCES"),
             (["--project", str(project_id), "--tasks", "5-x"], {}, 2, "task ids are numbers")]
    for argv, env, status, words in cases:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            try:
                code = cli.main(["--quiet", *argv])
            except SystemExit as exc:  # argparse
                code = exc.code
        out = "".join(capsys.readouterr())
        assert code == status and words in out, (argv, env, out)
    annotations = _annotations(api, long_task)
    monkeypatch.setenv("MAX_VIDEO_FRAMES", "10")
    assert cli.main(["--quiet", "--project", str(project_id), "--tasks", f"{long_task},999999"]) == 1
    out = capsys.readouterr().out
    assert f"task {long_task}: video has 12 frames, more than MAX_VIDEO_FRAMES (10)" in out, out
    assert "task 999999: not found in Label Studio" in out, out
    assert Journal(state).task(project_id, long_task)["attempts"] == 1, "a permanent failure was retried"
    assert _ours(api, long_task) == [] and _annotations(api, long_task) == annotations
