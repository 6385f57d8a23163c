"""Flask app factory: `create_app(settings=None, model=None)`."""
from __future__ import annotations

import logging

import requests
from flask import Flask

from config.settings import Settings
from sam2_model import SAM2

from . import protocol
from .model import SAM2Backend


def create_app(settings: Settings | None = None, model: SAM2 | None = None,
               http: requests.Session | None = None) -> Flask:
    """The backend as a WSGI app. settings default to the environment (Settings.from_env()); `model` injects
    an already loaded SAM 2 (tests), else SAM2_CHECKPOINT is loaded on first use; `http` replaces the
    requests session used to fetch media."""
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(settings.log_level)
    backend = SAM2Backend(settings, model=model, http=http)
    app = Flask("sam2_backend")
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb << 20  # larger bodies: 413 JSON
    app.extensions["sam2_backend"] = backend
    protocol.register(app, backend)
    return app
