"""`python -m backend.preannotate --project ID ...`: pre-annotate a project from the command line.

Settings come from the environment, as the server's (SAM2_CHECKPOINT, DEVICE, LABEL_STUDIO_URL,
LABEL_STUDIO_API_KEY, PROMPT_SOURCES, PREANNOTATE_*). Progress bars show tasks and frames with an ETA;
Ctrl-C stops cleanly (a second Ctrl-C aborts at once) and a rerun resumes; a summary table ends the run.
Exit status: 0 every eligible task done, 1 some failed (listed with the reason), 2 bad arguments or a
project that cannot be pre-annotated (unknown project, bad token, unsupported label config), 130 stopped.
`--job ID` runs an HTTP job (jobs.py): its state, progress and summary go to the journal.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from config.settings import Settings, SettingsError

from ..errors import http_error
from .engine import ENGINES, EngineError, get_engine
from .journal import Journal
from .ledger import LabelStudioLedger
from .runner import Runner, Summary
from .spec import FrameProgress, Outcome
from .worker import WorkerFactory

logger = logging.getLogger("backend.preannotate")


def parse_task_ids(text: str) -> list[int]:
    """"1,5-9" -> [1, 5, 6, 7, 8, 9]; argparse.ArgumentTypeError for anything else."""
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"task ids are numbers and ranges like 1,5-9, got {part!r}") from None
        if first < 1 or last < first:
            raise argparse.ArgumentTypeError(f"bad task range {part!r}")
        ids.extend(range(first, last + 1))
    if not ids:
        raise argparse.ArgumentTypeError("no task id given")
    return sorted(set(ids))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend.preannotate", description=__doc__.split("\n\n")[0])
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--tasks", type=parse_task_ids, help="only these task ids, e.g. 1,5-9 (default: every task)")
    p.add_argument("--overwrite", action="store_true", help="track again even where the prediction is stored")
    p.add_argument("--retry-failed", action="store_true",
                   help="forget the failures of earlier runs (tasks that failed PREANNOTATE_MAX_ATTEMPTS times)")
    p.add_argument("--workers", type=int, help="worker processes / actors (default: one per GPU, else 1)")
    p.add_argument("--engine", choices=ENGINES, default=None, help="default: PREANNOTATE_ENGINE (local)")
    p.add_argument("--ray-address", help="join this Ray cluster, HEAD_IP:6379 (ray engine; default: RAY_ADDRESS, "
                   "else a local Ray started here)")
    p.add_argument("--job", help=argparse.SUPPRESS)  # an HTTP job's id (jobs.py)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


class Bars:
    """Two tqdm bars: tasks (with the ETA) and frames of the tasks being tracked."""

    def __init__(self, total_tasks: int, enabled: bool):
        self.tasks = tqdm(total=total_tasks, unit="task", desc="tasks ", disable=not enabled, dynamic_ncols=True)
        self.frames = tqdm(total=0, unit="frame", desc="frames", disable=not enabled, dynamic_ncols=True)
        self._seen: dict[int, tuple[int, int]] = {}  # task -> (done, total)

    def progress(self, report: FrameProgress) -> None:
        done, total = self._seen.get(report.task_id, (0, 0))
        if report.frames_total > total:
            self.frames.total += report.frames_total - total
            self.frames.refresh()
        if report.frames_done > done:
            self.frames.update(report.frames_done - done)
        self._seen[report.task_id] = (max(done, report.frames_done), max(total, report.frames_total))

    def outcome(self, outcome: Outcome) -> None:
        if outcome.ok or not outcome.retryable:
            self.tasks.update(1)
        done, total = self._seen.pop(outcome.task_id, (0, 0))
        self.frames.total -= total - done  # frames of a failed or cut attempt will not be tracked (this time)
        self.frames.refresh()

    def close(self) -> None:
        self.frames.close()
        self.tasks.close()


def summary_table(summary: Summary) -> str:
    rows = [("task", "status", "attempts", "frames", "seconds", "detail")]
    rows += [(str(line.task_id), line.status, str(line.attempts or ""), str(line.frames or ""),
              f"{line.seconds:.1f}" if line.seconds else "", line.detail) for line in summary.lines]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    counts = ", ".join(f"{n} {s}" for s, n in summary.as_dict()["counts"].items()) or "no task"
    out.append(f"project {summary.project}: {counts}")
    if summary.failed:
        out.append("failed: " + "; ".join(f"task {line.task_id}: {line.detail}" for line in summary.failed))
    if summary.stopped:
        out.append("stopped: run the same command again to resume")
    return "\n".join(out)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT / SIGTERM set `stop` (a second one raises KeyboardInterrupt); the old handlers come back after."""
    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping: finishing cleanly (Ctrl-C again aborts)", file=sys.stderr, flush=True)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    journal = Journal(settings.preannotate_state_dir)
    if args.job:
        journal.update_job(args.job, pid=os.getpid())
    stop = threading.Event()
    try:
        with _stop_on_signals(stop):
            return _run(args, settings, journal, stop)
    finally:
        journal.close()


def _run(args: argparse.Namespace, settings: Settings, journal: Journal, stop: threading.Event) -> int:
    name = args.engine or settings.preannotate_engine
    options = {"address": args.ray_address} if args.ray_address else {}
    workers = args.workers or settings.preannotate_workers or None
    try:
        if args.ray_address and name != "ray":
            raise ValueError("--ray-address joins a Ray cluster: use it with --engine ray")
        if not settings.sam2_checkpoint:
            raise ValueError("set SAM2_CHECKPOINT to the checkpoint the workers load (as for the server)")
        ledger = LabelStudioLedger.from_settings(settings)
        engine = get_engine(name, workers=workers, **options)
        runner = Runner(settings, ledger, journal, engine)
        plan = runner.plan(args.project, args.tasks, args.overwrite, args.retry_failed)
    except Exception as exc:
        known = http_error(exc)
        if known is None and not isinstance(exc, (EngineError, ValueError)):
            raise
        return _fail(journal, args.job, known[1] if known else str(exc))
    bars = Bars(len(plan.specs), enabled=not args.quiet and not args.job)
    job_progress = _JobProgress(journal, args.job, len(plan.specs), len(plan.lines))
    try:
        summary = runner.run(plan, WorkerFactory(settings), stop,
                             on_progress=lambda p: (bars.progress(p), job_progress.progress(p)),
                             on_outcome=lambda o: (bars.outcome(o), job_progress.outcome(o)))
    except EngineError as exc:  # e.g. a local Ray that cannot start: the tasks stay pending
        return _fail(journal, args.job, str(exc))
    finally:
        bars.close()
        engine.close()
    print(summary_table(summary))
    if args.job:
        state = "cancelled" if summary.stopped else ("failed" if summary.failed else "done")
        journal.update_job(args.job, state=state, summary=summary.as_dict(), progress=job_progress.state(True))
    return summary.exit_code


def _fail(journal: Journal, job: str | None, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    if job:
        journal.update_job(job, state="failed", error=message)
    return 2


class _JobProgress:
    """An HTTP job's progress in the journal, written at most once a second."""

    def __init__(self, journal: Journal, job: str | None, tasks: int, decided: int):
        self.journal, self.job = journal, job
        self.tasks, self.decided, self.finished = tasks, decided, 0
        self.frames: dict[int, tuple[int, int]] = {}
        self._written = 0.0

    def state(self, final: bool = False) -> dict:
        return {"tasks_total": self.tasks, "tasks_finished": self.finished, "tasks_decided_without_run": self.decided,
                "frames_done": sum(d for d, _ in self.frames.values()),
                "frames_total": sum(t for _, t in self.frames.values()), "final": final}

    def progress(self, report: FrameProgress) -> None:
        self.frames[report.task_id] = (report.frames_done, report.frames_total)
        self._write()

    def outcome(self, outcome: Outcome) -> None:
        if outcome.ok or not outcome.retryable:
            self.finished += 1
        self._write(force=True)

    def _write(self, force: bool = False) -> None:
        if self.job and (force or time.monotonic() - self._written >= 1.0):
            self.journal.update_job(self.job, progress=self.state())
            self._written = time.monotonic()
