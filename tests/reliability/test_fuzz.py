"""Property-based fuzz of the live gunicorn server with schemathesis, from backend/openapi.yaml.

Every operation gets MAX_EXAMPLES schema-conforming (positive) and MAX_EXAMPLES schema-violating
(negative) requests, with basic auth (operations without parameters or body have nothing to violate).
Nothing may answer 5xx, and every 4xx must be JSON {"error": "<message>"}.
Generation is derandomized (same requests every run) and failures are collected rather than shrunk.
"""
from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode

from backend.protocol import OPENAPI

MAX_EXAMPLES = 30

pytestmark = pytest.mark.slow


def fuzz(url: str, auth: tuple[str, str], max_examples: int = MAX_EXAMPLES) -> tuple[int, list[str]]:
    """(requests sent, problems) of a fuzz run against the server at `url`."""
    schema = schemathesis.openapi.from_path(OPENAPI)
    sent, problems = [0], []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                                 phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=url, auth=auth, timeout=60)
                sent[0] += 1
                where = f"{case.method} {case.path} ({mode.value}) body={str(case.body)[:200]!r}"
                if response.status_code >= 500:
                    problems.append(f"{where} -> {response.status_code} {response.text[:300]}")
                elif response.status_code >= 400:
                    try:
                        message = response.json()["error"]
                        assert isinstance(message, str) and message
                    except (ValueError, KeyError, TypeError, AssertionError):
                        problems.append(f"{where} -> {response.status_code} without JSON error: "
                                        f"{response.text[:200]!r}")

            try:
                run()
            except hypothesis.errors.Unsatisfiable:  # nothing to violate: a GET without parameters
                assert mode is GenerationMode.NEGATIVE and operation.method == "get", operation.path
    return sent[0], problems


def test_fuzz_live_server(server):
    sent, problems = fuzz(server.url, server.auth)
    print(f"schemathesis: {sent} requests, {len(problems)} problems")
    assert sent >= 8 * MAX_EXAMPLES // 2
    assert not problems, "\n".join(problems[:10])
    assert server.request("GET", "/health", auth=False)[0] == 200
