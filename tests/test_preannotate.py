"""Pre-annotation pieces that need no Label Studio: task ranges, prompt selection and signatures, the journal,
the ledger's backoff, the HTTP routes' validation. The whole flow runs against the real Label Studio in
tests/e2e/test_e2e_preannotate.py."""
from __future__ import annotations

import argparse
import threading

import httpx
import pytest
from label_studio_sdk.core.api_error import ApiError

from backend.app import create_app
from backend.labelconfig import parse_label_config
from backend.model import webhook_task
from backend.preannotate.cli import parse_task_ids
from backend.preannotate.engine import EngineError, get_engine
from backend.preannotate.journal import Journal
from backend.preannotate.ledger import (
    SIGNATURE_KEY, LabelStudioLedger, LedgerError, TransientError, prompt_signature, select_prompts, stamp,
    stored_signature,
)
from backend.preannotate.runner import GAVE_UP, NO_PROMPTS, Summary, TaskLine
from backend.preannotate.spec import DONE, FAILED, FrameProgress, JobSpec, Outcome
from backend.preannotate.worker import WorkerFactory
from backend.results import AUTO_KEY
from config.settings import Settings, SettingsError

VIDEO_XML = ('<View><Video name="video" value="$video" framerate="25"/>'
             '<VideoRectangle name="box" toName="video"/></View>')
CONFIG = parse_label_config(VIDEO_XML)


def _box(region_id: str, frame: int, x: float = 10.0, **extra) -> dict:
    item = {"frame": frame, "time": (frame - 1) / 25, "x": x, "y": 10.0, "width": 20.0, "height": 20.0,
            "rotation": 0, "enabled": True, **extra}
    return {"id": region_id, "type": "videorectangle", "from_name": "box", "to_name": "video",
            "value": {"framesCount": 10, "duration": 0.4, "sequence": [item]}}


def test_parse_task_ids():
    assert parse_task_ids("1,5-7, 3") == [1, 3, 5, 6, 7]
    assert parse_task_ids("4,4") == [4]
    for bad in ("", "a", "5-x", "7-5", "0", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_task_ids(bad)


def test_signature_follows_the_prompts_only():
    base = [_box("a", 1)]
    sig = prompt_signature(base)
    assert prompt_signature([_box("a", 1)]) == sig
    assert prompt_signature([_box("a", 2)]) != sig and prompt_signature([_box("a", 1, x=11.0)]) != sig
    assert prompt_signature([_box("b", 1)]) != sig
    with_ours = _box("a", 1)
    computed = dict(with_ours["value"]["sequence"][0], frame=5)
    computed[AUTO_KEY] = [5, computed["x"], computed["y"], computed["width"], computed["height"], True]
    with_ours["value"]["sequence"].append(computed)
    assert prompt_signature([with_ours]) == sig, "a keyframe this backend computed changed the signature"
    scored = dict(_box("a", 1), score=0.3, readonly=False)
    assert prompt_signature([scored]) == sig
    result = stamp([_box("a", 1), _box("b", 2)], sig)
    assert {r[SIGNATURE_KEY] for r in result} == {sig} and stored_signature({"result": result}) == sig
    assert stored_signature({"result": [_box("a", 1)]}) is None
    assert stored_signature({"result": [dict(_box("a", 1), **{SIGNATURE_KEY: "x"}), stamp([_box("b", 1)], "y")[0]]
                             }) is None


def test_select_prompts_in_source_order():
    task = {"annotations": [{"id": 1, "result": [_box("old", 1)], "created_at": "2026-01-01"},
                            {"id": 2, "result": [_box("new", 1)], "created_at": "2026-02-01"},
                            {"id": 3, "result": [_box("cancelled", 1)], "created_at": "2026-03-01",
                             "was_cancelled": True}],
            "drafts": [{"id": 4, "result": [_box("draft", 1)], "created_at": "2026-04-01"}],
            "predictions": [{"id": 5, "model_version": "detector", "result": [_box("det", 1)]},
                            {"id": 6, "model_version": "sam2", "result": [_box("ours", 1)]}]}
    pick = lambda sources: select_prompts(task, CONFIG, sources, "sam2")  # noqa: E731
    assert pick(["annotation"]) == ("annotation", [_box("new", 1)])
    assert pick(["draft", "annotation"]) == ("draft", [_box("draft", 1)])
    assert pick(["prediction"]) == ("prediction", [_box("det", 1)])
    bare = {"predictions": [{"id": 6, "model_version": "sam2", "result": [_box("ours", 1)]}],
            "annotations": [{"id": 1, "result": [{"type": "choices", "to_name": "video", "value": {}}]}]}
    assert select_prompts(bare, CONFIG, ["annotation", "draft", "prediction"], "sam2") is None
    with pytest.raises(ValueError, match="unknown prompt source"):
        select_prompts(task, CONFIG, ["guess"], "sam2")


def _spec(task: int = 7, signature: str = "s1", attempt: int = 1) -> JobSpec:
    return JobSpec(1, {"id": task, "data": {}}, VIDEO_XML, [], "sam2", signature, attempt=attempt)


def test_journal_attempts_give_up_and_reset(tmp_path):
    journal = Journal(tmp_path)
    spec = _spec()
    for attempt in (1, 2):
        journal.started(spec.retry() if attempt == 2 else spec)
        journal.progress(1, FrameProgress(7, attempt, 3, 10, "host:1"))
        journal.finished(1, Outcome(7, attempt, FAILED, error="boom", retryable=True))
    assert journal.attempts(1, 7, "sam2", "s1") == 2 and journal.task(1, 7)["frames_done"] == 3
    assert journal.gave_up(1, 7, "sam2", "s1", 2) == "boom" and journal.gave_up(1, 7, "sam2", "s1", 3) is None
    assert journal.attempts(1, 7, "sam2", "s2") == 0, "changed prompts start counting again"
    assert journal.reset_failed(1) == 1 and journal.attempts(1, 7, "sam2", "s1") == 0
    journal.started(spec)
    journal.finished(1, Outcome(7, 1, DONE, objects=0, frames=10))
    assert journal.found_nothing(1, 7, "sam2", "s1") and not journal.found_nothing(1, 7, "sam2", "s2")
    assert Journal(tmp_path).task(1, 7)["frames_done"] == 10, "another connection reads the same file"


def test_journal_jobs_queue_and_merge(tmp_path):
    journal = Journal(tmp_path)
    first = journal.add_job(1, [3], "webhook")
    assert journal.extend_queued(1, [5, 3], "webhook") == first
    assert journal.extend_queued(1, [5], "predict") is None
    claimed = journal.claim_job(max_running=1)
    assert claimed["id"] == first and claimed["tasks"] == "[3, 5]" and claimed["state"] == "running"
    journal.add_job(2, None, "http")
    assert journal.claim_job(max_running=1) is None, "a second job ran beside the first"
    journal.update_job(first, state="done", summary={"counts": {"done": 2}})
    assert journal.job(first)["finished"] is not None
    assert journal.claim_job(max_running=1)["project"] == 2


def _api_error(status: int, retry_after: str | None = None) -> ApiError:
    return ApiError(status_code=status, headers={"retry-after": retry_after} if retry_after else {}, body="no")


def test_ledger_backoff():
    waits = []
    ledger = LabelStudioLedger("http://127.0.0.1:9", "token", retry_s=30.0, sleep=waits.append)
    failures = [httpx.ConnectError("refused"), httpx.ConnectError("refused"), _api_error(429, "3"),
                _api_error(503)]

    def flaky():
        if failures:
            raise failures.pop(0)
        return "ok"

    assert ledger.call("writing", flaky) == "ok"
    assert waits == [0.5, 1.0, 3.0, 4.0], "backoff doubles, Retry-After replaces it"
    with pytest.raises(LedgerError, match="not found") as info:
        ledger.call("reading project 5", lambda: (_ for _ in ()).throw(_api_error(404)))
    assert info.value.status == 404
    with pytest.raises(LedgerError, match="refused the token"):
        ledger.call("reading", lambda: (_ for _ in ()).throw(_api_error(401)))
    impatient = LabelStudioLedger("http://127.0.0.1:9", "token", retry_s=1.0, sleep=waits.append)
    with pytest.raises(TransientError, match="failed for 1 s"):
        impatient.call("writing", lambda: (_ for _ in ()).throw(httpx.ConnectError("refused")))


def test_summary_exit_codes_and_engines():
    lines = [TaskLine(1, DONE), TaskLine(2, NO_PROMPTS)]
    assert Summary(1, lines).exit_code == 0
    assert Summary(1, lines + [TaskLine(3, GAVE_UP, "boom")]).exit_code == 1
    assert Summary(1, lines, stopped=True).exit_code == 130
    assert Summary(1, lines + [TaskLine(3, FAILED)]).as_dict()["counts"] == {DONE: 1, FAILED: 1, NO_PROMPTS: 1}
    with pytest.raises(EngineError, match="unknown engine"):
        get_engine("dask")
    with pytest.raises(ValueError):
        get_engine("local", workers=0)


def test_settings_and_webhook_bodies():
    assert Settings(prompt_sources="Annotation, prediction").prompt_source_list == ("annotation", "prediction")
    for bad in ({"prompt_sources": "annotation,guess"}, {"prompt_sources": " , "}, {"preannotate_engine": "dask"},
                {"preannotate_max_attempts": 0}):
        with pytest.raises(SettingsError):
            Settings(**bad)
    assert webhook_task({"annotation": {"task": 4, "project": 2}}) == (4, 2)
    assert webhook_task({"task": {"id": 4}, "project": {"id": 2}, "annotation": {}}) == (4, 2)
    assert webhook_task({"task": "4", "project": {"id": True}}) == (None, None)


def test_preannotate_routes_reject_bad_bodies(tmp_path):
    settings = Settings(media_cache_dir=str(tmp_path / "media"), preannotate_state_dir=str(tmp_path / "state"),
                        log_level="WARNING")
    client = create_app(settings).test_client()
    for body, status, words in [({}, 400, 'missing field "project"'), ({"project": True}, 400, "positive"),
                                ({"project": 0}, 400, "positive"), ({"project": 1, "tasks": []}, 400, "empty"),
                                ({"project": 1, "tasks": [1, "2"]}, 400, "tasks[1]"),
                                ({"project": 1}, 503, "LABEL_STUDIO_URL")]:
        answer = client.post("/preannotate", json=body)
        assert answer.status_code == status and words in answer.get_json()["error"], (body, answer.get_json())
    answer = client.get("/preannotate/unknown")
    assert answer.status_code == 404 and "no pre-annotation job" in answer.get_json()["error"]
    webhook = {"action": "ANNOTATION_CREATED", "annotation": {"task": 1, "project": 1, "result": [_box("a", 1)]}}
    assert "job" not in client.post("/webhook", json=webhook).get_json(), "queued without Label Studio to write to"


class _Predictions:
    """In-memory stand-in for label_studio_sdk's `client.predictions` (list / create / delete), to check the
    ledger's write order; the real Label Studio is exercised in tests/e2e/test_e2e_preannotate.py."""

    def __init__(self, stored: list[dict]):
        self.stored = stored
        self.calls: list[str] = []

    def list(self, task: int):
        return [dict(p) for p in self.stored if p["task"] == task]

    def create(self, task: int, result, score, model_version):
        self.calls.append("create")
        created = {"id": max([p["id"] for p in self.stored], default=0) + 1, "task": task, "result": result,
                   "score": score, "model_version": model_version}
        self.stored.append(created)
        return type("Created", (), {"id": created["id"]})()

    def delete(self, id: int):
        self.calls.append(f"delete {id}")
        self.stored[:] = [p for p in self.stored if p["id"] != id]


def test_ledger_writes_first_then_leaves_one_prediction_of_ours():
    stored = [{"id": 1, "task": 7, "model_version": "detector", "result": [_box("det", 1)]},
              {"id": 2, "task": 7, "model_version": "sam2", "result": stamp([_box("a", 1)], "old")},
              {"id": 3, "task": 8, "model_version": "sam2", "result": stamp([_box("b", 1)], "s1")}]
    predictions = _Predictions(stored)
    client = type("Client", (), {"predictions": predictions})()
    ledger = LabelStudioLedger("http://127.0.0.1:9", "token", client=client)
    spec = _spec(task=7, signature="s1")
    assert not ledger.holds(spec), "a prediction of other prompts counted as this key's"
    assert ledger.write_prediction(spec, {"result": [_box("a", 1)], "score": 0.5}) == 4
    assert predictions.calls == ["create", "delete 2"], "the old prediction went before the new one was stored"
    assert sorted(p["id"] for p in stored) == [1, 3, 4], "another task's or another model's prediction was touched"
    stored.append(dict(stored[-1], id=5))  # a killed worker's duplicate of the same key
    assert ledger.holds(spec) and sorted(p["id"] for p in stored if p["task"] == 7) == [1, 5]
    assert ledger.write_prediction(spec, {"result": []}) is None and len(stored) == 3, "an empty result was stored"


def test_local_engine_reports_a_worker_that_cannot_start(tmp_path):
    """A spawned worker whose model cannot load: every spec ends failed with the reason, none is retried."""
    settings = Settings(sam2_checkpoint=str(tmp_path / "missing.pt"), device="cpu", log_level="WARNING",
                        media_cache_dir=str(tmp_path / "media"))
    outcomes: list[Outcome] = []
    engine = get_engine("local", workers=2)
    engine.run([_spec(7), _spec(8)], WorkerFactory(settings), lambda p: None,
               lambda o: outcomes.append(o), threading.Event())
    assert sorted(o.task_id for o in outcomes) == [7, 8]
    assert all(o.status == FAILED and not o.retryable and "cannot start" in o.error and "missing.pt" in o.error
               for o in outcomes), outcomes
