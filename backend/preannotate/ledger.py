"""Label Studio as the ledger: tasks and their prompts in, one prediction per task out (label_studio_sdk).

Key of a task's prediction: (task, model_version, prompt signature). The signature is a hash of the prompt
regions the job tracked (`prompt_signature`); it is stored inside the prediction, on every region of its
result, as `SIGNATURE_KEY` (Label Studio keeps unknown keys of result items), so Label Studio itself tells
which prompts a stored prediction answers. A task is pending when it has prompts and no prediction of the
current model version carrying their signature.

Writes are idempotent: `write_prediction` creates the new prediction first, then deletes every other
prediction of this model version on the task (an earlier prompt signature, or a duplicate a killed worker
left), so the task never ends with two, and never loses the old one before the new one is stored.
Only predictions are written or deleted; annotations and drafts are only read.

Label Studio unreachable, 5xx and 429 are retried with exponential backoff (0.5 s doubling up to 4 s; a
Retry-After header replaces it) for up to RETRY_S seconds, then raise TransientError (the job is retried
later); other 4xx raise LedgerError.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from config.settings import PROMPT_SOURCES, Settings

from ..errors import BackendError
from ..labelconfig import LabelConfig
from ..predict import PROMPT_TYPES
from ..prompts import _newest
from ..results import is_computed_keyframe
from .spec import JobSpec

logger = logging.getLogger(__name__)

SIGNATURE_KEY = "sam2_prompts"  # on every region of a prediction this backend wrote: the prompts' signature
RETRY_S = 120.0
BACKOFF_S = (0.5, 4.0)  # first wait, longest wait
T = TypeVar("T")


class LedgerError(BackendError):
    """Label Studio refused a request for a reason retrying will not change (bad token, unknown project, ...);
    status: the HTTP status the backend answers with it."""


class TransientError(BackendError):
    """Label Studio stayed unreachable or overloaded (5xx/429) for RETRY_S seconds (HTTP answer: 502)."""

    def __init__(self, message: str):
        super().__init__(message, 502)


# ---------------------------------------------------------------- prompts and their signature


def prompt_regions(regions: Sequence[Mapping[str, Any]], config: LabelConfig) -> list[dict]:
    """The regions that can prompt the config's media (the signature covers these only)."""
    return [dict(r) for r in regions if r.get("type") in PROMPT_TYPES and r.get("to_name") == config.object_name]


def prompt_signature(regions: Sequence[Mapping[str, Any]]) -> str:
    """16 hex digits fingerprinting what the model is given: each region's id, type, names, parent, frame and
    value (videorectangle keyframes this backend computed left out, as prompts.video_prompts does)."""
    canon = []
    for r in regions:
        value = dict(r.get("value") or {})
        if isinstance(value.get("sequence"), list):
            value["sequence"] = [k for k in value["sequence"] if not is_computed_keyframe(k)]
        canon.append({k: r.get(k) for k in ("id", "type", "from_name", "to_name", "parentID", "item_index", "origin")}
                     | {"value": value})
    raw = json.dumps(canon, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def select_prompts(task: Mapping[str, Any], config: LabelConfig, sources: Sequence[str],
                   model_version: str) -> tuple[str, list[dict]] | None:
    """(source, prompt regions) from the first of `sources` that holds any, else None.

    annotation: the newest annotation not cancelled; draft: the newest draft; prediction: the newest prediction
    of another model version (e.g. a detector's boxes imported with the tasks)."""
    for source in sources:
        if source == "annotation":
            item = _newest(a for a in task.get("annotations") or [] if not a.get("was_cancelled"))
        elif source == "draft":
            item = _newest(task.get("drafts") or [])
        elif source == "prediction":
            item = _newest(p for p in task.get("predictions") or [] if p.get("model_version") != model_version)
        else:
            raise ValueError(f"unknown prompt source {source!r}: choose from {', '.join(PROMPT_SOURCES)}")
        regions = prompt_regions((item or {}).get("result") or [], config)
        if regions:
            return source, regions
    return None


def stamp(result: Sequence[Mapping[str, Any]], signature: str) -> list[dict]:
    """The result's regions, each carrying the signature of the prompts they answer."""
    return [dict(r, **{SIGNATURE_KEY: signature}) for r in result]


def stored_signature(prediction: Mapping[str, Any]) -> str | None:
    """The signature a prediction this backend wrote carries (None: not ours, or no region)."""
    found = {r.get(SIGNATURE_KEY) for r in prediction.get("result") or [] if isinstance(r, Mapping)}
    return found.pop() if len(found) == 1 else None


# ---------------------------------------------------------------- Label Studio access


def _as_dict(obj: Any) -> dict:
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None) or obj.dict
    return dump(by_alias=True)


class LabelStudioLedger:
    """label_studio_sdk access with backoff. `client` replaces the SDK client (tests use a real Label Studio)."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 30.0, retry_s: float = RETRY_S,
                 client: LabelStudio | None = None, sleep: Callable[[float], None] = time.sleep):
        self.url = url
        self.client = client or LabelStudio(base_url=url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.retry_s = retry_s
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> LabelStudioLedger:
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise LedgerError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to pre-annotate a project")
        return cls(settings.label_studio_url, settings.label_studio_api_key, settings.download_timeout_s)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """fn() with backoff on unreachable / 5xx / 429 (see the module docstring)."""
        give_up = time.monotonic() + self.retry_s
        wait = BACKOFF_S[0]
        while True:
            try:
                return fn()
            except ApiError as exc:
                status = exc.status_code or 0
                if status != 429 and status < 500:
                    raise _ledger_error(what, exc) from None
                reason = f"HTTP {status}"
                retry_after = _retry_after(exc)
            except (httpx.TransportError, ConnectionError) as exc:
                reason, retry_after = f"{type(exc).__name__}: {exc}", None
            delay = wait if retry_after is None else min(retry_after, RETRY_S)  # the server knows best
            if time.monotonic() + delay > give_up:
                raise TransientError(f"Label Studio at {self.url}: {what} failed for {self.retry_s:g} s ({reason})")
            logger.warning("Label Studio: %s failed (%s), retrying in %.1f s", what, reason, delay)
            self.sleep(delay)
            wait = min(wait * 2, BACKOFF_S[1])

    def label_config(self, project: int) -> str:
        """The project's label config XML; LedgerError 404 when the project does not exist."""
        return self.call(f"reading project {project}", lambda: self.client.projects.get(id=project)).label_config

    def tasks(self, project: int) -> Iterator[dict]:
        """Every task of the project with its annotations, drafts (Label Studio returns only the token user's)
        and predictions."""
        pager = self.call(f"listing the tasks of project {project}",
                          lambda: self.client.tasks.list(project=project, fields="all"))
        for task in pager:
            yield _as_dict(task)

    def task(self, project: int, task_id: int) -> dict:
        """One task of the project (as `tasks`); LedgerError 404 when it does not exist or is another project's."""
        task = _as_dict(self.call(f"reading task {task_id}", lambda: self.client.tasks.get(id=task_id)))
        if task.get("project") not in (None, project):
            raise LedgerError(f"task {task_id} belongs to project {task.get('project')}, not {project}", 404)
        return task

    def predictions(self, task_id: int) -> list[dict]:
        return [_as_dict(p) for p in self.call(f"reading the predictions of task {task_id}",
                                               lambda: self.client.predictions.list(task=task_id))]

    def holds(self, spec: JobSpec) -> bool:
        """True when the task holds a prediction for spec's key; extra predictions of ours are then removed."""
        ours = [p for p in self.predictions(spec.task_id) if p.get("model_version") == spec.model_version]
        match = [p for p in ours if stored_signature(p) == spec.signature]
        if not match:
            return False
        self._delete_others(spec, ours, keep=match[-1]["id"])
        return True

    def write_prediction(self, spec: JobSpec, answer: Mapping[str, Any]) -> int | None:
        """Store `answer` ({"result", "score"?}) as the task's prediction for spec's key; returns its id (None:
        an empty result is not stored, see runner.py). Creates first, then deletes our other predictions."""
        result = stamp(answer.get("result") or [], spec.signature)
        if not result:
            return None
        created = self.call(f"writing the prediction of task {spec.task_id}", lambda: self.client.predictions.create(
            task=spec.task_id, result=result, score=answer.get("score"), model_version=spec.model_version))
        ours = [p for p in self.predictions(spec.task_id) if p.get("model_version") == spec.model_version]
        self._delete_others(spec, ours, keep=created.id)
        return created.id

    def _delete_others(self, spec: JobSpec, ours: Sequence[Mapping[str, Any]], keep: int) -> None:
        for p in ours:
            if p["id"] != keep:
                self._delete(p["id"], spec.task_id)

    def _delete(self, prediction_id: int, task_id: int) -> None:
        try:
            self.call(f"deleting prediction {prediction_id} of task {task_id}",
                      lambda: self.client.predictions.delete(id=prediction_id))
        except LedgerError as exc:
            if exc.status != 404:  # already gone: what we wanted
                raise


def _retry_after(exc: ApiError) -> float | None:
    try:
        return float((exc.headers or {}).get("retry-after") or (exc.headers or {}).get("Retry-After"))
    except (TypeError, ValueError):
        return None


def _ledger_error(what: str, exc: ApiError) -> LedgerError:
    status = exc.status_code or 0
    detail = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)[:300]
    if status in (401, 403):
        return LedgerError(f"Label Studio refused the token (HTTP {status}) while {what}: check LABEL_STUDIO_API_KEY",
                           403)
    if status == 404:
        return LedgerError(f"not found in Label Studio while {what} (HTTP 404)", 404)
    return LedgerError(f"Label Studio answered HTTP {status} while {what}: {detail}", 502 if status >= 500 else 422)
