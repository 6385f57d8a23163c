"""A small run of bench/load.py against gunicorn gthread workers: no errors, no cross-task leaks, memory bounded,
sessions evicted by byte budget and by TTL (SESSION_TTL_S)."""
from __future__ import annotations

import time

import pytest

from bench.load import live_server, request_body, run_load
from tests.reliability.conftest import TASKS

BUDGET_MB = 0.3  # about two of the four tasks' sessions
TTL_S = 2.0
MODEL_OVERHEAD_MB = 150  # activations and allocator slack above the idle worker

pytestmark = pytest.mark.slow


def test_small_load(rel_tmp, ls):
    with live_server(rel_tmp, ls.url, SESSION_BUDGET_MB=str(BUDGET_MB), SESSION_TTL_S=str(TTL_S),
                     LOG_LEVEL="WARNING") as server:
        assert server.request("POST", "/predict", request_body("click", 1))[0] == 200  # loads the model
        idle_mb = server.worker_memory()["VmRSS"] / 2**20
        figures = run_load(server, clients=8, requests=5, tasks=TASKS)
        print(figures)
        assert figures["requests"] == 40 and figures["errors"] == 0, figures["error_samples"]
        assert figures["leaks"] == []
        assert figures["worker_peak_rss_mb"] <= idle_mb + BUDGET_MB + MODEL_OVERHEAD_MB, (idle_mb, figures)
        sessions = figures["sessions"]
        assert sessions["sessions_evicted"] > 0 and sessions["session_bytes"] <= BUDGET_MB * 2**20, sessions



def test_sessions_expire_after_ttl(rel_tmp, ls):
    with live_server(rel_tmp, ls.url, SESSION_TTL_S=str(TTL_S), LOG_LEVEL="WARNING") as server:
        for task in (1, 2):
            assert server.request("POST", "/predict", request_body("click", task))[0] == 200
        assert server.request("GET", "/metrics")[1]["sessions"] == 2
        time.sleep(TTL_S + 0.5)  # both idle past the TTL: the next request releases them
        assert server.request("POST", "/predict", request_body("box", 3))[0] == 200
        after = server.request("GET", "/metrics")[1]
        assert (after["sessions"], after["sessions_evicted"]) == (1, 2), after
