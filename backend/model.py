"""The backend's model object, in the label-studio-ml shape: `setup`, `predict`, `fit`.

The SAM 2 model is loaded once per process, on first use (or in the background after /setup), under a
lock, so concurrent first requests load it once. Label Studio may never call /setup (after a restart): every
request carries what it needs, and /setup only adds fallbacks (the label config per project, and the
hostname and token to fetch media with when LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are unset).

Time limits (Label Studio gives up on /predict after 100 s):
- interactive requests (params.context present) track for at most INTERACTIVE_BUDGET_S after the request
  arrived; the prompted frames are answered first, then as many frames as fit around the newest edit;
- batch requests (Retrieve Predictions, context null) share PREDICT_BUDGET_S over all their tasks; a task the
  budget does not finish (not reached, or its tracking cut) is answered with NO_PREDICTION and queued as a
  pre-annotation job (backend/preannotate), which writes its whole track to Label Studio when done.
  Direct answers carry the prompts' signature (preannotate.ledger), so a later job leaves them alone.
Annotation webhooks (ANNOTATION_CREATED / ANNOTATION_UPDATED with prompt regions) queue their task too.
Two batch calls for the same task and prompts at once (the editor's task reload after Submit and a Retrieve
Predictions) answer it once: the other gets NO_PREDICTION (claims.py), so Label Studio stores one prediction.
With AUTO_MASKLETS on, batch tasks without prompts are queued as well (a job finds their objects,
backend/automatic.py); interactive requests without prompts still get nothing.
A batch answer never holds an empty prediction: a task without prompts, whose media fails, or that the budget
did not reach is answered with NO_PREDICTION (an empty list in its place in `results`), for which Label Studio
stores nothing (label_studio/ml/models.py, `_get_predictions_from_ml_backend`, reads each task's answer as a
list of predictions). A stored empty prediction of the current model version would make Label Studio skip the
task in every later Retrieve Predictions (`predict_tasks`), and opening a task in the editor asks /predict for
it (label_studio/tasks/api.py, `evaluate_predictions`).
Work is kept in the task's session: asking again with unchanged prompts resumes the tracking, so repeated
Retrieve Predictions complete long videos.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
import torch

from config.settings import Settings
from sam2_model import SAM2, CheckpointError, ImagePredictor, load_model
from sam2_model.gate import configure_threads
from sam2_model.video.predictor import VideoPredictor

from .answers import AnswerMemory, open_store
from .claims import AnswerClaims
from .errors import BackendError, http_error
from .events import EVENTS, EventHandler, implied_event
from .labelconfig import parse_label_config
from .media import MediaFetcher
from .automatic import check_auto_label
from .predict import PROMPT_TYPES, TaskPredictor, has_prompt_regions, named_regions
from .preannotate.jobs import JobManager
from .preannotate.ledger import LabelStudioLedger, prompt_regions, prompt_signature, stamp
from .prompts import current_owner, current_regions
from .regions import checked_request
from .sessions import SessionStore

logger = logging.getLogger(__name__)

PREANNOTATE_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")  # webhooks that queue their task
NO_PREDICTION: list = []  # a batch task's answer that makes Label Studio store no prediction for it
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def webhook_task(data: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(task id, project id) of an annotation webhook body; None where it does not say."""
    def ident(value: Any) -> int | None:
        value = value.get("id") if isinstance(value, Mapping) else value
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    annotation = data.get("annotation") if isinstance(data.get("annotation"), Mapping) else {}
    task = ident(data.get("task")) or ident(annotation.get("task"))
    project = ident(data.get("project")) or ident(annotation.get("project"))
    return task, project


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class LazyModel:
    """The process's SAM 2 model, loaded on first `get()` (thread-safe); `model` injects a loaded one."""

    def __init__(self, settings: Settings, model: SAM2 | None = None):
        self.settings = settings
        self._model = model
        self._lock = threading.Lock()
        self.error: str | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> SAM2:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def warm_up(self) -> None:
        """Load in a background thread (errors are kept for /health and raised again on use)."""
        if self._model is None and self.settings.sam2_checkpoint:
            threading.Thread(target=self._quiet_get, name="sam2-warm-up", daemon=True).start()

    def _quiet_get(self) -> None:
        try:
            self.get()
        except BackendError:
            pass

    def _load(self) -> SAM2:
        path = self.settings.sam2_checkpoint
        if not path:
            raise BackendError("no model configured: set SAM2_CHECKPOINT to a SAM 2 checkpoint file", 503)
        device = resolve_device(self.settings.device)
        started = time.monotonic()
        try:
            model = load_model(path, self.settings.sam2_model or None, device=device)
        except (CheckpointError, ValueError, RuntimeError) as exc:
            self.error = f"cannot load SAM2_CHECKPOINT={path!r} (SAM2_MODEL={self.settings.sam2_model!r}): {exc}"
            raise BackendError(self.error, 503) from exc
        logger.info("loaded %s on %s in %.1f s", path, device, time.monotonic() - started)
        configure_threads(self.settings.workers)
        self.error = None
        return model


class SAM2Backend:
    """Serves Label Studio's /setup, /predict and /webhook bodies (see protocol.py for the HTTP side)."""

    def __init__(
        self,
        settings: Settings,
        model: SAM2 | None = None,
        http: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.clock = clock
        self.model = LazyModel(settings, model)
        self.store = SessionStore(settings.session_ttl_s, int(settings.session_budget_mb * 2**20), clock)
        self.fetcher = MediaFetcher(settings.media_cache_dir, settings.media_cache_mb << 20,
                                    settings.max_download_mb << 20, settings.download_timeout_s,
                                    self._credentials, http, settings.media_allow_private_hosts,
                                    settings.allowed_media_hosts,
                                    (settings.max_video_frames, settings.max_video_pixels))
        self.predictor = TaskPredictor(self._video_predictor, self._image_predictor, self.fetcher, self.store,
                                       settings.max_propagation_frames, settings.box_tolerance_px, self.model_version,
                                       AnswerMemory(open_store(settings.answer_memory_db)))
        self.events = EventHandler(self.predictor, settings.max_propagation_frames,
                                   wait_slots=max(0, settings.threads - 1))
        self._setups: dict[str, dict] = {}  # project id -> latest /setup body
        self._video: VideoPredictor | None = None
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self._jobs: JobManager | None = None
        self.claims = AnswerClaims()

    @property
    def model_version(self) -> str:
        if self.settings.sam2_model:
            return self.settings.sam2_model
        if self.settings.sam2_checkpoint:
            return Path(self.settings.sam2_checkpoint).stem
        return self.model._model.config.name if self.model.loaded else "sam2"

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    # -- model access -------------------------------------------------------------------------------

    def _video_predictor(self) -> VideoPredictor:
        model = self.model.get()
        with self._lock:
            if self._video is None:
                dtype = self.settings.sam2_dtype
                if dtype == "auto":
                    dtype = "bfloat16" if model.device.type == "cuda" else "float32"
                self._video = VideoPredictor(model, dtype=DTYPES[dtype],
                                             feature_cache_bytes=self.settings.feature_cache_mb << 20)
            return self._video

    def _image_predictor(self) -> ImagePredictor:
        return ImagePredictor(self.model.get())

    def _credentials(self) -> tuple[str | None, str | None]:
        """LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, else what the latest /setup said."""
        with self._lock:
            latest = next(reversed(self._setups.values()), {}) if self._setups else {}
        url = self.settings.label_studio_url or latest.get("hostname") or None
        key = self.settings.label_studio_api_key or latest.get("access_token") or None
        return url, key

    # -- label-studio-ml interface ------------------------------------------------------------------

    def setup(self, body: Mapping[str, Any]) -> dict:
        """Remember the project's config and Label Studio's address; check the config; warm the model up."""
        project = str(body.get("project") or "").split(".")[0]
        schema = body.get("schema")
        if schema is not None:
            if not isinstance(schema, str):
                raise BackendError('"schema" must be the label config XML string')
            parse_label_config(schema)
        with self._lock:
            self._setups.pop(project, None)
            self._setups[project] = {k: body.get(k) for k in ("schema", "hostname", "access_token")
                                     if isinstance(body.get(k), str) and body.get(k)}
        self.model.warm_up()
        return {"model_version": self.model_version}

    def predict(
        self,
        tasks: list[dict],
        label_config: str | None = None,
        project: str | None = None,
        context: Mapping[str, Any] | None = None,
        started: float | None = None,
    ) -> dict:
        """One prediction per task, in order. context None = batch (prompts from annotations/drafts); a context
        with an "event" (or a click's time_ms/frame, events.implied_event) goes to the event protocol (events.py).
        Regions are checked first (regions.py)."""
        started = self.clock() if started is None else started
        tasks, context = checked_request(tasks, context)
        event = implied_event(context)
        if event is not None:
            self.count(f"event_{event}" if event in EVENTS else "event_unknown")
            needs_config = event in EVENTS and event != "capabilities"
            config = parse_label_config(self._label_config(label_config, project)) if needs_config else None
            return self.events.handle(event, tasks, config, context)
        config = parse_label_config(self._label_config(label_config, project))
        interactive = context is not None
        budget = self.settings.interactive_budget_s if interactive else self.settings.predict_budget_s
        deadline = started + budget
        results, queued, claimed = [], [], []
        try:
            for task in tasks:
                regions = current_regions(task, context)
                if interactive:
                    results.append(self.predictor.predict(task, config, regions, deadline, named_regions(context),
                                                          current_owner(task)))
                elif self.settings.auto_masklets and not has_prompt_regions(regions, config):
                    queued.append(task.get("id"))  # AUTO_MASKLETS: a job finds its objects (backend/automatic.py)
                    results.append(NO_PREDICTION)
                elif self.clock() >= deadline:
                    if has_prompt_regions(regions, config):
                        logger.info("batch time budget (PREDICT_BUDGET_S=%s) spent: task %s queued for "
                                    "pre-annotation", budget, task.get("id"))
                        queued.append(task.get("id"))
                    self.count("tasks_skipped_budget")
                    results.append(NO_PREDICTION)
                else:
                    results.append(self._batch_task(task, config, regions, deadline, queued, claimed))
        finally:
            self.claims.release(claimed)
        if queued:
            self._queue_batch(project, queued)
        self.count("tasks", len(tasks))
        return {"results": results, "model_version": self.model_version}

    def _label_config(self, label_config: str | None, project: str | None) -> str:
        """The request's label config, else the one /setup gave for the project."""
        if label_config is None:
            with self._lock:
                label_config = self._setups.get(str(project or "").split(".")[0], {}).get("schema")
            if label_config is None:
                raise BackendError('"label_config" is missing (and no /setup gave this project\'s config)')
        return label_config

    def _batch_task(self, task: Mapping[str, Any], config, regions: list[dict], deadline: float,
                    queued: list, claimed: list) -> dict | list:
        """A batch task's prediction, its regions stamped with the prompts' signature (preannotate.ledger);
        NO_PREDICTION when it has no region or its own data is unusable (logged), when the budget ran out
        while it was tracked (the task goes to `queued`: a pre-annotation job writes its whole track), or when
        another call is answering the same task and prompts (claims.py). claimed: the keys this call claimed."""
        signature = prompt_signature(prompt_regions(regions, config))
        key = (task.get("id"), signature, self.model_version)
        prompted = has_prompt_regions(regions, config)
        if prompted:
            if not self.claims.claim(key):
                logger.info("task %s: another request is answering the same prompts: nothing to store twice",
                            task.get("id"))
                self.count("tasks_answered_elsewhere")
                return NO_PREDICTION
            claimed.append(key)
        try:
            answer = self.predictor.predict(task, config, regions, deadline, owner=current_owner(task))
            if self.clock() >= deadline and prompted:
                logger.info("task %s: the batch time budget ran out while tracking it: queued for pre-annotation",
                            task.get("id"))
                queued.append(task.get("id"))
                return NO_PREDICTION
            if not answer["result"]:
                return NO_PREDICTION
            return dict(answer, result=stamp(answer["result"], signature))
        except Exception as exc:
            answer = http_error(exc)
            if answer is None or answer[0] >= 500:
                raise
            logger.warning("task %s: no prediction: %s", task.get("id"), answer[1])
            self.count("tasks_failed")
            return NO_PREDICTION

    # -- pre-annotation jobs (backend/preannotate) --------------------------------------------------

    @property
    def jobs(self) -> JobManager:
        with self._lock:
            if self._jobs is None:
                self._jobs = JobManager(self.settings)
            return self._jobs

    def preannotate(self, project: int, tasks: list[int] | None, origin: str = "http") -> dict:
        """Queue a pre-annotation job after checking that Label Studio knows the project and that its label
        config is supported (LedgerError / LabelConfigError otherwise)."""
        url, key = self._credentials()
        if not url or not key:
            raise BackendError("pre-annotation writes to Label Studio: set LABEL_STUDIO_URL and "
                               "LABEL_STUDIO_API_KEY", 503)
        ledger = LabelStudioLedger(url, key, self.settings.download_timeout_s, retry_s=0.0)
        config = parse_label_config(ledger.label_config(project))
        if self.settings.auto_masklets:
            check_auto_label(config, self.settings.auto_label)
        job = self.jobs.submit(project, tasks, origin, (url, key))
        return {"job": job, "state": "queued", "project": project, "tasks": tasks, "status": f"/preannotate/{job}"}

    def preannotate_status(self, job: str) -> dict:
        found = self.jobs.status(job)
        if found is None:
            raise BackendError(f"no pre-annotation job {job!r}", 404)
        return found

    def _queue_batch(self, project: str | None, tasks: list) -> None:
        """Queue the batch tasks the budget did not finish (Retrieve Predictions), when Label Studio is known."""
        project_id = str(project or "").split(".")[0]
        url, key = self._credentials()
        if not project_id.isdigit() or not url or not key:
            logger.warning("tasks %s not queued for pre-annotation: %s", tasks, "the request names no project"
                           if not project_id.isdigit() else "LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY unknown")
            return
        self.jobs.submit(int(project_id), [int(t) for t in tasks], "predict", (url, key))
        self.count("tasks_queued", len(tasks))

    def fit(self, event: str, data: Mapping[str, Any]) -> dict:
        """SAM 2 is not trained here. ANNOTATION_CREATED / ANNOTATION_UPDATED with prompt regions queue that
        task for pre-annotation (webhook: the masklet arrives after Submit); other events are acknowledged."""
        self.count(f"webhook_{event}")
        out: dict[str, Any] = {"status": "ok", "event": event, "trained": False}
        if event in PREANNOTATE_EVENTS and self.settings.preannotate_webhook:
            task, project = webhook_task(data)
            annotation = data.get("annotation")
            result = annotation.get("result") if isinstance(annotation, Mapping) else None
            prompted = isinstance(result, list) and any(isinstance(r, Mapping) and r.get("type") in PROMPT_TYPES
                                                        for r in result)
            url, key = self._credentials()
            if task is not None and project is not None and prompted and url and key:
                out["job"] = self.jobs.submit(project, [task], "webhook", (url, key))
                self.count("tasks_queued")
        return out

    # -- introspection ------------------------------------------------------------------------------

    def health(self) -> dict:
        out = {"status": "UP", "model_class": type(self).__name__, "model_version": self.model_version,
               "model_loaded": self.model.loaded}
        if self.model.error:
            out["model_error"] = self.model.error
        return out

    def metrics(self) -> dict:
        with self._lock:
            counters = dict(self.counters)
        return {"model_loaded": self.model.loaded, "model_version": self.model_version, **self.store.stats(),
                "media_downloads": self.fetcher.downloads, "media_cache_bytes": self.fetcher.cached_bytes(),
                "counters": counters}

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
        self.events.close()
        self.store.close()
