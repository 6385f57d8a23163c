"""The local journal: SQLite in PREANNOTATE_STATE_DIR, shared by the CLI, job processes and the HTTP routes.

Label Studio is the ledger of what is done; the journal only keeps what Label Studio cannot: per task and
prompt signature, the attempts, the last error, frames done and a heartbeat (progress, ETA, and when to stop
retrying), the tasks whose tracking found no object (no prediction stored, see ledger.write_prediction), and
the HTTP jobs (state, the tasks asked for, progress, summary). Every process opens its own connection (WAL).
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .spec import DONE, FAILED, FrameProgress, JobSpec, Outcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    project INTEGER NOT NULL, task INTEGER NOT NULL, model_version TEXT NOT NULL, signature TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'pending', last_error TEXT,
    frames_done INTEGER NOT NULL DEFAULT 0, frames_total INTEGER NOT NULL DEFAULT 0, objects INTEGER,
    heartbeat REAL, worker TEXT, PRIMARY KEY (project, task));
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, project INTEGER NOT NULL, tasks TEXT, origin TEXT NOT NULL, state TEXT NOT NULL,
    pid INTEGER, created REAL NOT NULL, started REAL, finished REAL, progress TEXT, summary TEXT, error TEXT);
"""
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")


class Journal:
    """One SQLite file, `<state_dir>/journal.sqlite3`."""

    def __init__(self, state_dir: str | Path, clock=time.time):
        folder = Path(state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "journal.sqlite3"
        self.clock = clock
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self._lock = threading.RLock()  # one connection, shared by the threads of a server

    def _x(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self.db.execute(sql, args)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): atomic over every process sharing the file."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # -- tasks ----------------------------------------------------------------------------------------

    def task(self, project: int, task: int) -> sqlite3.Row | None:
        return self._x("SELECT * FROM attempts WHERE project=? AND task=?", (project, task)).fetchone()

    def attempts(self, project: int, task: int, model_version: str, signature: str) -> int:
        """Attempts made for this key (0 when the prompts or the model changed since)."""
        row = self.task(project, task)
        same = row is not None and (row["model_version"], row["signature"]) == (model_version, signature)
        return row["attempts"] if same else 0

    def gave_up(self, project: int, task: int, model_version: str, signature: str, max_attempts: int) -> str | None:
        """The last error when this key failed `max_attempts` times, else None."""
        row = self.task(project, task)
        if row is None or (row["model_version"], row["signature"]) != (model_version, signature):
            return None
        return row["last_error"] if row["status"] == FAILED and row["attempts"] >= max_attempts else None

    def found_nothing(self, project: int, task: int, model_version: str, signature: str) -> bool:
        """True when this key was tracked to the end and no object was seen (nothing stored in Label Studio)."""
        row = self.task(project, task)
        return (row is not None and (row["model_version"], row["signature"]) == (model_version, signature)
                and row["status"] == DONE and row["objects"] == 0)

    def started(self, spec: JobSpec) -> None:
        """An attempt at `spec` begins: attempts = spec.attempt-th of this key."""
        prior = self.attempts(spec.project, spec.task_id, spec.model_version, spec.signature)
        self._x(
            "INSERT OR REPLACE INTO attempts (project, task, model_version, signature, attempts, status, last_error,"
            " frames_done, frames_total, objects, heartbeat) VALUES (?, ?, ?, ?, ?, 'running', NULL, 0, 0, NULL, ?)",
            (spec.project, spec.task_id, spec.model_version, spec.signature, prior + 1, self.clock()))

    def progress(self, project: int, report: FrameProgress) -> None:
        self._x("UPDATE attempts SET frames_done=?, frames_total=?, heartbeat=?, worker=? WHERE project=? AND"
                " task=?", (report.frames_done, report.frames_total, self.clock(), report.worker, project,
                            report.task_id))

    def finished(self, project: int, outcome: Outcome) -> None:
        self._x("UPDATE attempts SET status=?, last_error=?, frames_done=MAX(frames_done, ?), objects=?,"
                " heartbeat=? WHERE project=? AND task=?",
                (outcome.status if outcome.status == FAILED else DONE, outcome.error, outcome.frames,
                         outcome.objects if outcome.status == DONE else None, self.clock(), project,
                         outcome.task_id))

    def reset_failed(self, project: int, tasks: Iterable[int] | None = None) -> int:
        """Forget the attempts of the project's failed tasks (all, or `tasks`); returns how many."""
        sql, args = "DELETE FROM attempts WHERE project=? AND status=?", [project, FAILED]
        if tasks is not None:
            ids = list(tasks)
            sql += f" AND task IN ({','.join('?' * len(ids))})"
            args += ids
        return self._x(sql, args).rowcount

    # -- HTTP jobs ------------------------------------------------------------------------------------

    def add_job(self, project: int, tasks: Sequence[int] | None, origin: str) -> str:
        job_id = uuid.uuid4().hex[:12]
        self._x("INSERT INTO jobs (id, project, tasks, origin, state, created) VALUES (?, ?, ?, ?, 'queued', ?)",
                (job_id, project, None if tasks is None else json.dumps(list(tasks)), origin, self.clock()))
        return job_id

    def extend_queued(self, project: int, tasks: Sequence[int], origin: str) -> str | None:
        """Add `tasks` to a queued job of the project with a task list and the same origin; its id, or None."""
        with self._transaction():
            row = self._x("SELECT id, tasks FROM jobs WHERE project=? AND origin=? AND state='queued' AND"
                          " tasks IS NOT NULL ORDER BY created LIMIT 1", (project, origin)).fetchone()
            if row is None:
                return None
            merged = sorted(set(json.loads(row["tasks"])) | set(tasks))
            self._x("UPDATE jobs SET tasks=? WHERE id=?", (json.dumps(merged), row["id"]))
        return row["id"]

    def claim_job(self, max_running: int) -> sqlite3.Row | None:
        """Mark the oldest queued job running, when fewer than `max_running` run; the job, or None."""
        with self._transaction():
            running = self._x("SELECT COUNT(*) FROM jobs WHERE state='running'").fetchone()[0]
            row = None
            if running < max_running:
                row = self._x("SELECT * FROM jobs WHERE state='queued' ORDER BY created LIMIT 1").fetchone()
                if row is not None:
                    self._x("UPDATE jobs SET state='running', started=? WHERE id=?", (self.clock(), row["id"]))
        return None if row is None else self.job(row["id"])

    def job(self, job_id: str) -> sqlite3.Row | None:
        return self._x("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set job columns; progress and summary are stored as JSON."""
        for key in ("progress", "summary"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        if fields.get("state") in ("done", "failed", "cancelled"):
            fields.setdefault("finished", self.clock())
        cols = ", ".join(f"{k}=?" for k in fields)
        self._x(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), job_id))

    def jobs(self, states: Sequence[str]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(states))
        return self._x(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created", tuple(states)).fetchall()
