"""Pre-annotation jobs of the HTTP side: POST /preannotate, Retrieve Predictions' queued tasks, webhooks.

A job is a row in the journal (queued -> running -> done | failed | cancelled) and, while it runs, its own
process: a fresh interpreter running the CLI (`python -m backend.preannotate --job ID`), never a thread of
gunicorn and never a fork of it (the CLI starts its workers with spawn, or joins Ray). A supervisor thread
in the server only starts queued jobs (at most PREANNOTATE_MAX_JOBS run at once, over every gunicorn worker
sharing the state directory) and notices job processes that died. Tasks queued for a project while one of
its jobs waits join that job. The job process writes its progress and summary to the journal, so any
gunicorn worker answers GET /preannotate/<id>.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from config.settings import Settings

from .journal import Journal

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
SUPERVISE_S = 0.5


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that give a new process these settings (unset fields left out)."""
    env = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is not None:
            env[f.name.upper()] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


class JobManager:
    """Queues jobs in the journal and runs each in its own CLI process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._journal: Journal | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._credentials: dict[int, tuple[str | None, str | None]] = {}  # project -> (url, key) for its jobs
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def journal(self) -> Journal:
        with self._lock:
            if self._journal is None:
                self._journal = Journal(self.settings.preannotate_state_dir)
            return self._journal

    def submit(self, project: int, tasks: Sequence[int] | None, origin: str,
               credentials: tuple[str | None, str | None] = (None, None)) -> str:
        """Queue a job (tasks None: every task of the project); its id. Tasks from Retrieve Predictions and
        webhooks join a queued job of the same project and origin."""
        with self._lock:
            self._credentials[project] = credentials
        job_id = self.journal.extend_queued(project, tasks, origin) if tasks and origin != "http" else None
        job_id = job_id or self.journal.add_job(project, tasks, origin)
        logger.info("pre-annotation job %s queued: project %s, tasks %s (%s)", job_id, project,
                    "all" if tasks is None else list(tasks), origin)
        self._ensure_supervisor()
        self._wake.set()
        return job_id

    def status(self, job_id: str) -> dict | None:
        """The job's state, progress and summary; None for an unknown id."""
        self._reap()
        row = self.journal.job(job_id)
        if row is None:
            return None
        out = {"job": row["id"], "project": row["project"], "tasks": json.loads(row["tasks"]) if row["tasks"] else None,
               "origin": row["origin"], "state": row["state"]}
        for key in ("progress", "summary"):
            if row[key]:
                out[key] = json.loads(row[key])
        for key in ("error", "created", "started", "finished"):
            if row[key] is not None:
                out[key] = row[key]
        return out

    # -- supervision ----------------------------------------------------------------------------------

    def _ensure_supervisor(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._supervise, name="preannotate-jobs", daemon=True)
                self._thread.start()

    def _supervise(self) -> None:
        while not self._closed.is_set():
            try:
                self._reap()
                while (job := self.journal.claim_job(self.settings.preannotate_max_jobs)) is not None:
                    self._launch(job)
            except Exception:  # the supervisor must survive a locked or broken journal
                logger.exception("pre-annotation job supervisor")
            self._wake.wait(SUPERVISE_S)
            self._wake.clear()

    def _launch(self, job) -> None:
        env = dict(os.environ, **settings_env(self.settings))
        url, key = self._credentials.get(job["project"], (None, None))
        if not self.settings.label_studio_url and url:
            env["LABEL_STUDIO_URL"] = url
        if not self.settings.label_studio_api_key and key:
            env["LABEL_STUDIO_API_KEY"] = key
        cmd = [sys.executable, "-m", "backend.preannotate", "--project", str(job["project"]), "--job", job["id"],
               "--quiet"]
        if job["tasks"]:
            cmd += ["--tasks", ",".join(map(str, json.loads(job["tasks"])))]
        log = Path(self.settings.preannotate_state_dir) / f"job-{job['id']}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs[job["id"]] = proc
        self.journal.update_job(job["id"], pid=proc.pid)
        logger.info("pre-annotation job %s started: pid %s, log %s", job["id"], proc.pid, log)

    def _reap(self) -> None:
        """Jobs whose process ended without saying how: failed, with the exit status."""
        for job_id, proc in list(self._procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self._procs[job_id]
            row = self.journal.job(job_id)
            if row is not None and row["state"] == "running":
                self.journal.update_job(job_id, state="failed", error=f"the job process ended with exit status {code}")
        for row in self.journal.jobs(["running"]):
            if row["id"] not in self._procs and row["pid"] and not _alive(row["pid"]):
                self.journal.update_job(row["id"], state="failed", error="the job process is gone")

    def close(self, terminate: bool = False) -> None:
        """Stop supervising; with terminate, stop the job processes this server started (SIGTERM: clean stop)."""
        self._closed.set()
        self._wake.set()
        for proc in list(self._procs.values()):
            if terminate and proc.poll() is None:
                proc.terminate()
        for proc in list(self._procs.values()):
            if terminate:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self._journal is not None:
            self._journal.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
