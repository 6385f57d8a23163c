"""Shared pytest fixtures and the CI guard against a run in which no test passed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide temporary folder for checkpoints that tests write and share."""
    return tmp_path_factory.mktemp("checkpoints")


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
