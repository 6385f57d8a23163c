"""The `local` engine: N worker processes on this machine (spawn context), one model each, one per GPU.

The coordinator (the caller's thread) hands one spec at a time to each idle worker through the worker's own
queue, so it always knows which spec a process holds: when a process dies, that spec's outcome is
`Outcome.crashed` (retryable) and a fresh process replaces it. Workers ignore SIGINT: Ctrl-C reaches the
coordinator, which sets the stop event; busy workers are then terminated (their task writes nothing).
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .spec import FAILED, FrameProgress, JobSpec, Outcome

logger = logging.getLogger(__name__)

POLL_S = 0.2
STOP_GRACE_S = 5.0
MAX_FAILED_STARTS = 3  # a worker that dies this often before it is ready (e.g. out of memory loading) stops the run


def _worker_main(factory, device: str | None, inbox, outbox, index: int, threads: int | None) -> None:
    """Body of a worker process: build and set up the worker, then run the specs the inbox gives.
    threads: torch's CPU threads (CPU workers share the cores; oversubscribed OpenMP threads crawl)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    try:
        worker = factory(device)
        worker.setup()
    except BaseException as exc:  # reported, then the process ends
        outbox.put(("setup_failed", index, f"{type(exc).__name__}: {exc}"))
        return
    outbox.put(("ready", index, None))
    while True:
        spec = inbox.get()
        if spec is None:
            return
        outcome = worker.run(spec, lambda p: outbox.put(("progress", index, p)))
        outbox.put(("outcome", index, outcome))


def _devices(factory, workers: int | None) -> list[str | None]:
    """One device per worker: the GPUs in turn when DEVICE allows CUDA and there are GPUs, else None."""
    settings = getattr(factory, "settings", None)
    wants_cuda = settings is None or settings.device in ("auto", "cuda")
    gpus = 0
    if wants_cuda:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n = workers or max(gpus, 1)
    return [f"cuda:{i % gpus}" if gpus else None for i in range(n)]


def _cpu_threads(workers: int) -> int:
    """torch threads of each CPU worker: the cores this process may use, one left to the coordinator and Label
    Studio, shared out (OpenMP threads that outnumber free cores spin and crawl: 20x slower measured)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (cores - 1) // workers)


@dataclass
class _Slot:
    index: int
    device: str | None
    process: multiprocessing.process.BaseProcess | None = None
    inbox: object = None
    spec: JobSpec | None = None
    ready: bool = False
    failed_starts: int = 0  # deaths before the worker was ready, in a row


class LocalEngine:
    """N spawned worker processes (workers=None: one per GPU, else 1)."""

    name = "local"

    def __init__(self, workers: int | None = None, **options):
        if options:
            raise TypeError(f"the local engine takes no options {sorted(options)}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._slots: list[_Slot] = []
        self._broken: str | None = None  # why no worker can run: every spec then fails with it

    def run(self, specs: Sequence[JobSpec], worker_factory, on_progress: Callable[[FrameProgress], None],
            on_outcome: Callable[[Outcome], JobSpec | None], stop_event: threading.Event) -> None:
        todo = collections.deque(specs)
        if not todo:
            return
        self._broken = None
        outbox = self._ctx.Queue()
        devices = _devices(worker_factory, self.workers)
        self._slots = [_Slot(i, d) for i, d in enumerate(devices[:max(1, min(len(devices), len(todo)))])]
        try:
            for slot in self._slots:
                self._start(slot, worker_factory, outbox)
            while (todo or any(s.spec for s in self._slots)) and not stop_event.is_set():
                broken = self._broken
                if broken:
                    for spec in list(todo) + [s.spec for s in self._slots if s.spec]:
                        on_outcome(Outcome(spec.task_id, spec.attempt, FAILED, error=broken))
                    return
                for slot in self._slots:
                    if slot.ready and slot.spec is None and todo:
                        slot.spec = todo.popleft()
                        slot.inbox.put(slot.spec)
                try:
                    kind, index, payload = outbox.get(timeout=POLL_S)
                except queue.Empty:
                    self._check_alive(worker_factory, outbox, on_outcome, todo)
                    continue
                slot = self._slots[index]
                if kind == "ready":
                    slot.ready, slot.failed_starts = True, 0
                elif kind == "setup_failed":
                    self._broken = f"the worker cannot start: {payload}"
                elif kind == "progress":
                    on_progress(payload)
                elif kind == "outcome":
                    slot.spec = None
                    retry = on_outcome(payload)
                    if retry is not None:
                        todo.append(retry)
        finally:
            self._stop_all()
            outbox.close()

    def _start(self, slot: _Slot, factory, outbox) -> None:
        slot.inbox = self._ctx.Queue()
        slot.ready, slot.spec = False, None
        threads = None if slot.device else _cpu_threads(len(self._slots))
        slot.process = self._ctx.Process(target=_worker_main, args=(factory, slot.device, slot.inbox, outbox,
                                                                    slot.index, threads),
                                         name=f"preannotate-worker-{slot.index}", daemon=True)
        slot.process.start()

    def _check_alive(self, factory, outbox, on_outcome, todo) -> None:
        """A dead process: its spec's outcome is `crashed` (retryable), and a new process takes its place."""
        for slot in self._slots:
            if slot.process is None or slot.process.is_alive():
                continue
            code = slot.process.exitcode
            spec = slot.spec
            logger.warning("worker %d (pid %s) died with exit code %s%s", slot.index, slot.process.pid, code,
                           f" while tracking task {spec.task_id}" if spec else "")
            if not slot.ready:
                slot.failed_starts += 1
                if slot.failed_starts >= MAX_FAILED_STARTS:
                    self._broken = (f"the worker process died {slot.failed_starts} times while loading the model "
                                    f"(exit code {code})")
                    return
            self._start(slot, factory, outbox)
            if spec is not None:
                retry = on_outcome(Outcome.crashed(spec, f"worker process died (exit code {code})"))
                if retry is not None:
                    todo.appendleft(retry)

    def pids(self) -> list[int]:
        """The worker processes' ids (tests kill one)."""
        return [s.process.pid for s in self._slots if s.process is not None and s.process.pid]

    def _stop_all(self) -> None:
        for slot in self._slots:
            if slot.process is None:
                continue
            if slot.spec is None and slot.process.is_alive():
                slot.inbox.put(None)
            else:
                slot.process.terminate()
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(STOP_GRACE_S)
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join()
        self._slots = []

    def close(self) -> None:
        self._stop_all()


ENGINE = LocalEngine
