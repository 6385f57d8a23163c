"""Pre-annotating a whole project with the Ray engine, end to end: the real Label Studio 1.23.2 and
`python -m backend.preannotate --engine ray --workers 2`, which starts a local Ray on loopback with two CPU
actors (no mock engine). The same six-video project as tests/e2e/test_e2e_preannotate.py (its fixtures and
helpers): keyframes on different frames, one task prompted by an imported detector prediction, one without
prompts, one whose media is missing. The actor tracking the longest video is killed with SIGKILL mid-video.
Checked: every prompted task ends with exactly one prediction covering its whole video; the killed task was
retried once (Ray restarts the actor); the rerun writes nothing (and, with nothing to track, starts no Ray);
the summary names the broken task; no annotation changes.
"""
from __future__ import annotations

import secrets

import pytest

from backend.preannotate.journal import Journal
from tests.e2e.test_e2e_preannotate import (  # noqa: F401 (project: a fixture)
    _annotations, _one_complete_prediction_each, _ours, _run_cli, project,
)

pytest.importorskip("ray", reason="the ray engine's optional dependency: pip install -r requirements-ray.txt")
pytestmark = pytest.mark.e2e


def test_cli_preannotates_a_project_on_ray(label_studio, project, e2e_checkpoint, tmp_path, artifacts):  # noqa: F811
    api = label_studio.api
    project_id, videos = project
    annotations = {v.task: _annotations(api, v.task) for v in videos.values()}
    state = tmp_path / "state"
    # Ray 2.60 starts its local cluster with token authentication: a token in the environment, none in ~/.ray
    ray_env = {"RAY_AUTH_TOKEN": secrets.token_hex(32)}

    code, out, killed = _run_cli(label_studio, e2e_checkpoint, state, project_id, "--engine", "ray", "--workers", "2",
                                 kill_during=videos["long"].task, log=artifacts / "preannotate-ray-run1.log", **ray_env)
    assert killed, "the long video was tracked before its actor could be killed mid-video"
    assert code == 1, out  # the broken task failed
    broken = videos["broken"].task
    assert f"task {broken}: task media" in out and "not found" in out, out
    assert "Ray actor died" in out, out  # the killed actor's attempt, logged as retried

    journal = Journal(state)
    first_ids = _one_complete_prediction_each(api, videos, journal, project_id)
    assert journal.task(project_id, videos["long"].task)["attempts"] == 2  # killed once, then done

    # the rerun: the broken task is given up after one attempt (PREANNOTATE_MAX_ATTEMPTS=1), the others hold
    # their prediction: nothing to track, so no Ray is started at all
    code, out, _ = _run_cli(label_studio, e2e_checkpoint, state, project_id, "--engine", "ray", "--workers", "2",
                            log=artifacts / "preannotate-ray-run2.log", PREANNOTATE_MAX_ATTEMPTS="1", **ray_env)
    assert code == 1 and f"task {broken}: task media" in out and "gave up" in out, out
    assert "Ray" not in out, out
    for task, prediction_id in first_ids.items():
        assert [p["id"] for p in _ours(api, task)] == [prediction_id], "the rerun wrote a prediction"
    assert out.count(" unchanged ") == len(first_ids), out
    for video in videos.values():
        assert _annotations(api, video.task) == annotations[video.task], "an annotation changed"
