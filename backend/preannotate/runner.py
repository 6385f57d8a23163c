"""One pre-annotation job over a project: plan from the ledger, run on an engine, retry, summarize.

`Runner.plan` reads the project's tasks from Label Studio and sorts them: no prompts (not eligible),
unchanged (Label Studio holds the prediction of these prompts, or the journal saw them tracked with no
object found), gave up (failed PREANNOTATE_MAX_ATTEMPTS times with these prompts; `retry_failed` resets), and
the specs to run. With AUTO_MASKLETS, a task without prompts is a spec of source "automatic" whose
signature is that of the AUTO_* options (backend.automatic.AutoOptions.signature): the same key, so the same
idempotence; once the task has prompts, the prompted spec replaces the automatic prediction. `Runner.run` hands the specs to the engine and decides retries: a retryable failure runs
again until the task's attempts reach max_attempts. Every outcome and progress report goes to the journal.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from config.settings import Settings

from ..automatic import AUTOMATIC, AutoOptions, check_auto_label
from ..labelconfig import parse_label_config
from .engine import Engine
from .journal import Journal
from .ledger import LabelStudioLedger, LedgerError, prompt_signature, select_prompts, stored_signature
from .spec import DONE, FAILED, UNCHANGED, FrameProgress, JobSpec, Outcome
from .worker import WorkerFactory

logger = logging.getLogger(__name__)

NO_PROMPTS = "no prompts"
GAVE_UP = "gave up"
STOPPED = "stopped"


@dataclass
class TaskLine:
    """One row of the summary. status: done, unchanged, failed, gave up, no prompts or stopped."""

    task_id: int
    status: str
    detail: str = ""
    attempts: int = 0
    frames: int = 0
    seconds: float = 0.0


@dataclass
class Plan:
    project: int
    specs: list[JobSpec] = field(default_factory=list)
    lines: dict[int, TaskLine] = field(default_factory=dict)  # tasks decided without running


@dataclass
class Summary:
    project: int
    lines: list[TaskLine]
    stopped: bool = False

    def count(self, status: str) -> int:
        return sum(1 for line in self.lines if line.status == status)

    @property
    def failed(self) -> list[TaskLine]:
        return [line for line in self.lines if line.status in (FAILED, GAVE_UP)]

    @property
    def exit_code(self) -> int:
        """0: every eligible task is done; 1: some failed; 130: stopped before the end."""
        return 130 if self.stopped else (1 if self.failed else 0)

    def as_dict(self) -> dict:
        counts = {s: self.count(s) for s in (DONE, UNCHANGED, FAILED, GAVE_UP, NO_PROMPTS, STOPPED) if self.count(s)}
        return {"project": self.project, "counts": counts, "stopped": self.stopped,
                "tasks": [vars(line) for line in self.lines]}


def model_version(settings: Settings) -> str:
    """The model_version the backend answers /predict with (SAM2Backend.model_version), without loading it."""
    from ..model import SAM2Backend

    backend = SAM2Backend(settings)
    try:
        return backend.model_version
    finally:
        backend.close()


class Runner:
    """Plans and runs pre-annotation jobs of one backend configuration (settings)."""

    def __init__(self, settings: Settings, ledger: LabelStudioLedger, journal: Journal, engine: Engine,
                 version: str | None = None):
        self.settings = settings
        self.ledger = ledger
        self.journal = journal
        self.engine = engine
        self.model_version = version or model_version(settings)
        self.max_attempts = settings.preannotate_max_attempts

    def plan(self, project: int, task_ids: Sequence[int] | None = None, overwrite: bool = False,
             retry_failed: bool = False) -> Plan:
        """The job's work; raises LedgerError (project, token) or LabelConfigError (config, or an AUTO_LABEL
        it lacks)."""
        xml = self.ledger.label_config(project)
        config = parse_label_config(xml)
        auto = AutoOptions.from_settings(self.settings) if self.settings.auto_masklets else None
        if auto is not None:
            check_auto_label(config, auto.label)
        if retry_failed:
            self.journal.reset_failed(project, task_ids)
        plan = Plan(project)
        for task in self._tasks(project, task_ids, plan):
            tid = int(task["id"])
            chosen = select_prompts(task, config, self.settings.prompt_source_list, self.model_version)
            if chosen is None and auto is not None:
                chosen = AUTOMATIC, []
            if chosen is None:
                sources = ", ".join(self.settings.prompt_source_list)
                plan.lines[tid] = TaskLine(tid, NO_PROMPTS, f"no prompt in {sources}")
                continue
            source, regions = chosen
            sig = auto.signature() if source == AUTOMATIC else prompt_signature(regions)
            key = (project, tid, self.model_version, sig)
            held = any(p.get("model_version") == self.model_version and stored_signature(p) == sig
                       for p in task.get("predictions") or [])
            if not overwrite and (held or self.journal.found_nothing(*key)):
                plan.lines[tid] = TaskLine(tid, UNCHANGED, "prediction of these prompts already stored" if held
                                           else "tracked before: no object found")
                continue
            error = self.journal.gave_up(*key, self.max_attempts)
            if error is not None:
                plan.lines[tid] = TaskLine(tid, GAVE_UP, f"{error} (failed {self.max_attempts} times; "
                                           "--retry-failed tries again)", self.journal.attempts(*key))
                continue
            plan.specs.append(JobSpec(project, {"id": tid, "data": task.get("data") or {}}, xml, regions,
                                      self.model_version, sig, source, self.journal.attempts(*key) + 1, overwrite))
        return plan

    def _tasks(self, project: int, task_ids: Sequence[int] | None, plan: Plan) -> Iterator[dict]:
        """The project's tasks, or the given ones; a given task Label Studio does not have is a failed line."""
        if task_ids is None:
            yield from self.ledger.tasks(project)
            return
        for tid in task_ids:
            try:
                yield self.ledger.task(project, tid)
            except LedgerError as exc:
                if exc.status != 404:
                    raise
                plan.lines[tid] = TaskLine(tid, FAILED, str(exc))

    def run(self, plan: Plan, factory: WorkerFactory, stop_event: threading.Event,
            on_progress: Callable[[FrameProgress], None] = lambda p: None,
            on_outcome: Callable[[Outcome], None] = lambda o: None) -> Summary:
        """Run the plan's specs on the engine; the summary lists every task of the plan."""
        lines = dict(plan.lines)
        first_attempt = {s.task_id: s.attempt for s in plan.specs}
        specs = {s.task_id: s for s in plan.specs}
        for spec in plan.specs:
            self.journal.started(spec)

        def progress(report: FrameProgress) -> None:
            self.journal.progress(plan.project, report)
            on_progress(report)

        def outcome(result: Outcome) -> JobSpec | None:
            spec = specs[result.task_id]
            self.journal.finished(plan.project, result)
            retry = None
            if result.status == FAILED and result.retryable and not stop_event.is_set() \
                    and spec.attempt < self.max_attempts:
                logger.warning("task %s: attempt %d failed (%s); retrying", spec.task_id, spec.attempt, result.error)
                retry = specs[spec.task_id] = spec.retry()
                self.journal.started(retry)
            else:
                status = result.status
                detail = result.error or ("no object found" if status == DONE and not result.objects else "")
                if status == FAILED and result.retryable:
                    detail = f"{detail} (attempt {spec.attempt} of {self.max_attempts})"
                lines[result.task_id] = TaskLine(result.task_id, status, detail,
                                                 spec.attempt - first_attempt[spec.task_id] + 1, result.frames,
                                                 result.seconds)
            on_outcome(result)
            return retry

        started = time.monotonic()
        if plan.specs:
            self.engine.run(plan.specs, factory, progress, outcome, stop_event)
        for spec in plan.specs:
            lines.setdefault(spec.task_id, TaskLine(spec.task_id, STOPPED, "not finished: a rerun resumes it"))
        logger.info("project %s: %d task(s) run in %.1f s", plan.project, len(plan.specs), time.monotonic() - started)
        return Summary(plan.project, [lines[k] for k in sorted(lines)], stopped=stop_event.is_set())
