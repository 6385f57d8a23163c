"""AUTO_MASKLETS end to end: the real Label Studio 1.23.2 and `python -m backend.preannotate` (run in this process,
the local engine's one spawned worker) on a video task without prompts. Checked: one prediction of the
backend's model version, valid for the label config (label_studio_sdk), labelled with the config's first label,
covering the video's frames; the rerun writes nothing; an AUTO_LABEL the config lacks stops the job (exit 2).
The model: random weights whose generator finds masks under loosened thresholds (tests.backend_helpers)."""
from __future__ import annotations

import pytest

from backend.preannotate import cli
from backend.preannotate.ledger import stored_signature
from sam2_model.train.synthetic import generate_clip
from sam2_model.video.frames import write_h264
from tests.backend_helpers import write_checkpoint
from tests.e2e.projects import FPS, VIDEO_CONFIG, prediction_errors

pytestmark = pytest.mark.e2e

FRAMES = 8
LOOSE = {"AUTO_MASKLETS": "true", "AUTO_POINTS_PER_SIDE": "4", "AUTO_PRED_IOU_THRESH": "0",
         "AUTO_STABILITY_THRESH": "0", "AUTO_EVERY": "4", "AUTO_MAX_OBJECTS": "3"}


def test_cli_preannotates_a_task_without_prompts(label_studio, tmp_path, monkeypatch, capsys):
    api = label_studio.api
    project_id = api.create_project("automatic masklets", VIDEO_CONFIG)["id"]
    clip = generate_clip(3, num_frames=FRAMES, size=(48, 64), num_objects=2, fps=FPS)
    write_h264(tmp_path / "auto.mp4", clip.frames, FPS)
    task = api.import_file(project_id, tmp_path / "auto.mp4")[-1]["id"]
    checkpoint = write_checkpoint(tmp_path / "backend_test.pt", seed=3)  # model_version: the file stem
    state = tmp_path / "state"
    for key, value in {"SAM2_CHECKPOINT": str(checkpoint), "DEVICE": "cpu", "LABEL_STUDIO_URL": label_studio.url,
                       "LABEL_STUDIO_API_KEY": label_studio.token, "PREANNOTATE_STATE_DIR": str(state),
                       "MEDIA_CACHE_DIR": str(state / "media"), **LOOSE}.items():
        monkeypatch.setenv(key, value)

    assert cli.main(["--quiet", "--project", str(project_id), "--workers", "1"]) == 0, capsys.readouterr()
    ours = [p for p in api.predictions(task) if p["model_version"] == "backend_test"]
    assert len(ours) == 1, ours
    (prediction,) = ours
    assert prediction["result"], "discovery found no object"
    assert not prediction_errors(VIDEO_CONFIG, prediction), prediction_errors(VIDEO_CONFIG, prediction)
    assert stored_signature(prediction).startswith("auto-")
    for region in prediction["result"]:
        assert region["type"] == "videorectangle" and region["value"]["labels"] == ["Car"]
        assert region["value"]["framesCount"] == FRAMES and 0.0 <= region["score"] <= 1.0
        assert all(1 <= k["frame"] <= FRAMES for k in region["value"]["sequence"])
    assert api.task(task)["annotations"] == [], "the backend wrote an annotation"

    capsys.readouterr()
    assert cli.main(["--quiet", "--project", str(project_id), "--workers", "1"]) == 0
    assert " unchanged " in capsys.readouterr().out
    assert [p["id"] for p in api.predictions(task) if p["model_version"] == "backend_test"] == [prediction["id"]]

    monkeypatch.setenv("AUTO_LABEL", "Truck")
    assert cli.main(["--quiet", "--project", str(project_id)]) == 2
    assert "AUTO_LABEL 'Truck' is not a label of the <Labels> on the video" in "".join(capsys.readouterr())
