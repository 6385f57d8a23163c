"""HTTP routes of the Label Studio ML backend protocol (Label Studio 1.23.2 bodies).

GET /health, POST /setup, POST /predict (also the event protocol, see events.py), POST /webhook, POST /preannotate
and GET /preannotate/<job> (pre-annotation jobs, backend/preannotate/jobs.py), GET /metrics, GET /versions,
GET /openapi.yaml (this API, described in openapi.yaml). Every error answer is
JSON `{"error": "..."}` saying what is wrong: 400 for malformed bodies and missing fields, 401 without valid
basic auth, 404/405 for unknown routes or methods, 413/422 for tasks, configs, prompts or media that cannot
be served (413 also for bodies over MAX_REQUEST_MB), 502 for Label Studio or media hosts that fail, 503 while
the model cannot be loaded.
When BASIC_AUTH_USER and BASIC_AUTH_PASS are set, every route but /health needs them (compared in
constant time).
"""
from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .errors import BackendError, http_error
from .model import SAM2Backend

logger = logging.getLogger(__name__)

OPEN_ROUTES = ("/health",)
OPENAPI = Path(__file__).with_name("openapi.yaml")


def _body() -> dict:
    """The request body as a JSON object (whatever the Content-Type says), else BackendError 400."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise BackendError("empty request body: a JSON object is required")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackendError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BackendError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _field(body: dict, name: str, types: type | tuple[type, ...], required: bool = True, where: str = "") -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BackendError(f'missing field "{where}{name}"')
        return None
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise BackendError(f'"{where}{name}" must be {names}, got {type(value).__name__}')
    return value


def _predict_args(body: dict) -> dict:
    """Validated arguments of SAM2Backend.predict from a /predict body (an event "capabilities" needs no task)."""
    params = _field(body, "params", dict, required=False) or {}
    context = _field(params, "context", dict, required=False, where="params.")
    event = None
    if context is not None:
        _field(context, "result", list, required=False, where="params.context.")
        event = _field(context, "event", str, required=False, where="params.context.")
    tasks = _field(body, "tasks", list, required=event != "capabilities") or []
    if not tasks and event != "capabilities":
        raise BackendError('"tasks" is empty: at least one task is required')
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise BackendError(f"tasks[{i}] must be an object, got {type(task).__name__}")
        _field(task, "data", dict, where=f"tasks[{i}].")
        for key in ("annotations", "drafts"):
            _field(task, key, list, required=False, where=f"tasks[{i}].")
    project = body.get("project")
    return {
        "tasks": tasks,
        "label_config": _field(body, "label_config", str, required=False),
        "project": None if project is None else str(project),
        "context": context,
    }


def _authorized(expected: tuple[str, str]) -> bool:
    auth = request.authorization
    user = (auth.username or "") if auth else ""
    password = (auth.password or "") if auth else ""
    ok_user = hmac.compare_digest(user.encode(), expected[0].encode())
    ok_pass = hmac.compare_digest(password.encode(), expected[1].encode())
    return auth is not None and auth.type == "basic" and ok_user and ok_pass


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="sam2-backend"'
    return response


def register(app: Flask, backend: SAM2Backend) -> None:
    """Add the routes, basic auth and JSON error handling to `app`."""
    credentials = backend.settings.basic_auth

    @app.before_request
    def check_auth():
        request.environ["sam2.started"] = backend.clock()
        if credentials and request.path not in OPEN_ROUTES and not _authorized(credentials):
            return _error(401, "authentication required: HTTP basic auth with BASIC_AUTH_USER/BASIC_AUTH_PASS")
        return None

    @app.get("/health")
    @app.get("/")
    def health():
        return jsonify(backend.health())

    @app.post("/setup")
    def setup():
        return jsonify(backend.setup(_body()))

    @app.post("/predict")
    def predict():
        args = _predict_args(_body())
        backend.count("predict_interactive" if args["context"] is not None else "predict_batch")
        return jsonify(backend.predict(**args, started=request.environ["sam2.started"]))

    @app.post("/webhook")
    def webhook():
        body = _body()
        action = _field(body, "action", str)
        return jsonify(backend.fit(action, body))

    @app.post("/preannotate")
    def preannotate():
        body = _body()
        project = _field(body, "project", int)
        tasks = _field(body, "tasks", list, required=False)
        if isinstance(project, bool) or project < 1:
            raise BackendError(f'"project" must be a positive integer, got {project!r}')
        for i, task in enumerate(tasks or []):
            if not isinstance(task, int) or isinstance(task, bool) or task < 1:
                raise BackendError(f'"tasks[{i}]" must be a positive integer task id, got {task!r}')
        if tasks is not None and not tasks:
            raise BackendError('"tasks" is empty: leave it out to pre-annotate every task of the project')
        response = jsonify(backend.preannotate(project, sorted(set(tasks)) if tasks else None))
        response.status_code = 202
        return response

    @app.get("/preannotate/<job>")
    def preannotate_status(job: str):
        return jsonify(backend.preannotate_status(job))

    @app.get("/metrics")
    def metrics():
        return jsonify(backend.metrics())

    @app.get("/versions")
    def versions():
        return jsonify({"versions": [backend.model_version], "model_version": backend.model_version})

    @app.get("/openapi.yaml")
    def openapi():
        return Response(OPENAPI.read_bytes(), mimetype="application/yaml")

    @app.errorhandler(HTTPException)
    def http_exception(exc: HTTPException):
        return _error(exc.code or 500, f"{exc.name}: {exc.description}")

    @app.errorhandler(Exception)
    def any_exception(exc: Exception):
        answer = http_error(exc)
        if answer is None:
            logger.exception("internal error on %s %s", request.method, request.path)
            backend.count("errors_internal")
            return _error(500, f"internal error ({type(exc).__name__}): {exc}")
        status, message = answer
        backend.count(f"errors_{status}")
        (logger.error if status >= 500 else logger.info)("%s %s -> %d: %s", request.method, request.path,
                                                          status, message)
        return _error(status, message)
