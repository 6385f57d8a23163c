"""Shared pytest fixtures and the CI guard against a run in which no test passed."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

RAY_TEST_TOKEN = secrets.token_hex(32)
"""The cluster token of every Ray the tests start in this process: Ray keeps the token of its first start in
the process, so a later start with another token cannot talk to its own GCS."""


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide temporary folder for checkpoints that tests write and share."""
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def ray_token_env():
    """RAY_AUTH_TOKEN = RAY_TEST_TOKEN (RAY_AUTH_MODE and RAY_ADDRESS unset) while a module's tests run: Ray 2.60
    then uses token authentication without writing ~/.ray/auth_token."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("RAY_AUTH_TOKEN", RAY_TEST_TOKEN)
        m.delenv("RAY_AUTH_MODE", raising=False)
        m.delenv("RAY_ADDRESS", raising=False)
        yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI, fail a run that collected tests but passed none (e.g. everything skipped)."""
    if not os.environ.get("CI") or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", [])) if reporter is not None else 0
    if session.testscollected and passed == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line("CI: tests were collected but none passed", red=True)
