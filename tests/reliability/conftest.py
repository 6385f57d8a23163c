"""Fixtures of the reliability suite: a fake Label Studio with one clip per task and live gunicorn servers.

Everything listens on and talks to loopback only (127.0.0.0/8); servers are started by bench/load.py's helpers.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.app import create_app
from bench.load import fake_label_studio, live_server
from config.settings import Settings
from tests.backend_helpers import small_model
from tests.fake_label_studio import LEGACY_TOKEN

TASKS = 4


@pytest.fixture(scope="session")
def rel_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def ls(rel_tmp):
    """Fake Label Studio on 127.0.0.1 serving bench.load.task_video(t) for t in 1..TASKS."""
    with fake_label_studio(TASKS, rel_tmp) as server:
        yield server


@pytest.fixture(scope="module")
def server(rel_tmp, ls):
    """A live gunicorn server (basic auth bench.load.AUTH) with default reliability settings."""
    with live_server(rel_tmp, ls.url) as live:
        yield live


@pytest.fixture(scope="session")
def model():
    return small_model()


@pytest.fixture
def make_client(ls, model, tmp_path):
    """make_client(**settings changes) -> a Flask test client of the backend (small model, fake Label Studio)."""
    apps = []

    def make(**changes):
        settings = Settings(**{"device": "cpu", "label_studio_url": ls.url, "label_studio_api_key": LEGACY_TOKEN,
                               "log_level": "WARNING", "media_cache_dir": str(tmp_path / f"cache{len(apps)}"),
                               **changes})
        apps.append(create_app(settings, model=model))
        return apps[-1].test_client()

    yield make
    for app in apps:
        app.extensions["sam2_backend"].close()
