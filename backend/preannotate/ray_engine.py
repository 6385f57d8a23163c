"""The `ray` engine: one Ray actor per worker, each holding a warm model (optional: requirements-ray.txt).

Cluster. `address=None` (and no RAY_ADDRESS) starts a local Ray inside the coordinating process (the CLI, or
an HTTP job's own CLI process; never gunicorn): `ray.init(address="local")`, kept light (no dashboard, a small
object store, as many logical CPUs as actors). An address ("HEAD_IP:6379", as `ray start --head` prints; or
RAY_ADDRESS, so HTTP jobs join too) joins a running cluster; its machines need this repository (Ray puts the
coordinator's working directory on the workers' path: run from the repository root), the requirements and the
checkpoint at the same path (the Docker image gives all).
Ray 2.60 token authentication: a cluster Ray starts uses token auth when a token exists (`ray.init()` always,
`ray start` when `~/.ray/auth_token`, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH holds one), but `ray.init(address=...)`
with an explicit address sends no token unless RAY_AUTH_MODE=token; so when joining with RAY_AUTH_MODE unset
and a token at hand, the engine turns token mode on (what Ray does itself for address "auto").

Actors. Where the cluster has GPUs (and DEVICE is not cpu), each actor reserves one (`num_gpus=1`; workers=None:
one per GPU) and Ray's CUDA_VISIBLE_DEVICES makes it "cuda"; otherwise `workers` CPU actors (default 1). Each
builds its Worker through the WorkerFactory and loads the model once (`ready()` says when, or why not). The
coordinator hands the next spec to whichever actor is free (dynamic load balancing) and asks busy actors for
their latest FrameProgress about once a second (actors run two calls at once: `run` and `progress`).

Faults. An actor that dies (SIGKILL, OOM, a lost node) is restarted by Ray (`max_restarts`, a fresh process
that loads the model again; calls meanwhile fail with ActorUnavailableError, so the coordinator asks again
until it is ready); the spec it held gets `Outcome.crashed` and the runner decides the retry
(`max_task_retries=0`: one retry layer, the runner's). An actor with no restarts left (ActorDiedError) or whose
model cannot load is dropped; with none left every remaining spec fails with the reason.
"""
from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorUnavailableError, RayError

from .engine import EngineError
from .local_engine import _cpu_threads
from .spec import FAILED, FrameProgress, JobSpec, Outcome

logger = logging.getLogger(__name__)

POLL_S = 0.2
PROGRESS_S = 1.0
RESTART_POLL_S = 0.5  # how often a restarting actor is asked whether it is ready
MAX_RESTARTS = 3
OBJECT_STORE_BYTES = 128 * 1024 * 1024  # specs and outcomes are small JSON-like records


class _Actor:
    """A Ray actor holding one Worker (its model loaded once)."""

    def __init__(self, factory, device: str | None, threads: int | None):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's
        if threads:
            import torch

            torch.set_num_threads(threads)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._latest: FrameProgress | None = None
        self._error: str | None = None
        try:
            self.worker = factory(device)
            self.worker.setup()
        except BaseException as exc:  # reported by ready(): a model that cannot load fails every spec once
            self._error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> str | None:
        """None once the model is loaded, else why it cannot be."""
        return self._error

    def run(self, spec: JobSpec) -> Outcome:
        self._latest = None
        return self.worker.run(spec, self._report)

    def _report(self, progress: FrameProgress) -> None:
        self._latest = progress

    def progress(self) -> FrameProgress | None:
        return self._latest


_RemoteActor = ray.remote(_Actor)


@dataclass
class _Slot:
    """One actor and what the coordinator waits for from it."""

    index: int
    handle: object
    ready: bool = False
    spec: JobSpec | None = None
    dead: str | None = None  # why this actor is given up
    progress_ref: object = None
    progress_at: float = 0.0
    ask_ready_at: float | None = None  # when to ask a restarting actor again
    refs: dict = field(default_factory=dict)  # ObjectRef -> "ready" | "run" | "progress"


def _short(exc: BaseException) -> str:
    """The first line of a Ray error (they run to pages of traceback)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """EngineError at once when nothing listens at HOST:PORT (ray.init waits minutes for an absent cluster)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():  # "auto" and the like: Ray resolves them
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise EngineError(f"cannot join the Ray cluster at {address}: nothing answers there ({exc}); start it with "
                          "`ray start --head --port PORT` on the head machine") from exc


def _join_with_token() -> None:
    """Ray 2.60: an explicit address does not turn token auth on by itself; do it when a token is at hand."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class RayEngine:
    """Ray actors on a local Ray (address None) or a joined cluster (address "HOST:PORT")."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, max_restarts: int = MAX_RESTARTS):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable: HTTP jobs join too
        self.max_restarts = max_restarts
        self._started_ray = False  # a local Ray this engine started
        self._connected = False  # ray.init called by this engine (close() disconnects)
        self._slots: list[_Slot] = []
        if address:  # fail fast on an unreachable cluster (a local Ray starts only when there is work)
            self._connect(None)

    # -- cluster -----------------------------------------------------------------------------------------

    def _connect(self, factory) -> None:
        if ray.is_initialized():
            return
        quiet = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        if self.address:
            _probe(self.address)
            if "RAY_AUTH_MODE" not in os.environ:
                _join_with_token()
            try:
                ray.init(address=self.address, **quiet)
                self._connected = True
            except Exception as exc:
                raise EngineError(
                    f"cannot join the Ray cluster at {self.address}: {_short(exc)} (is `ray start --head` running "
                    "there? with token authentication set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN; see README "
                    "'Pre-annotating a project')") from exc
            return
        gpus = 0 if _wants_cpu(factory) else None  # None: Ray counts the GPUs
        try:
            ray.init(address="local", num_cpus=max(1, self.workers or 1), num_gpus=gpus,
                     object_store_memory=OBJECT_STORE_BYTES, **quiet)
        except Exception as exc:
            raise EngineError(f"cannot start a local Ray: {_short(exc)}") from exc
        self._started_ray = self._connected = True

    def _plan_actors(self, factory) -> list[tuple[str | None, float, int | None]]:
        """(device, num_gpus, torch threads) of each actor."""
        gpus = 0 if _wants_cpu(factory) else int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            n = self.workers or gpus
            if n > gpus:
                logger.warning("%d GPU actors asked for, the cluster has %d GPUs: %d wait for one", n, gpus, n - gpus)
            return [("cuda", 1, None)] * n
        n = self.workers or 1
        threads = _cpu_threads(n) if self._started_ray else None  # joined nodes: Ray's OMP_NUM_THREADS (num_cpus)
        return [(None, 0, threads)] * n

    # -- the run -----------------------------------------------------------------------------------------

    def run(self, specs: Sequence[JobSpec], worker_factory, on_progress: Callable[[FrameProgress], None],
            on_outcome: Callable[[Outcome], JobSpec | None], stop_event: threading.Event) -> None:
        todo = collections.deque(specs)
        if not todo:
            return
        self._connect(worker_factory)
        actors = self._plan_actors(worker_factory)[:len(todo)]
        self._slots = []
        for index, (device, gpus, threads) in enumerate(actors):
            handle = _RemoteActor.options(num_cpus=1, num_gpus=gpus, max_restarts=self.max_restarts,
                                          max_task_retries=0, max_concurrency=2, scheduling_strategy="SPREAD"
                                          ).remote(worker_factory, device, threads)
            slot = _Slot(index, handle)
            slot.refs[handle.ready.remote()] = "ready"
            self._slots.append(slot)
        try:
            while (todo or any(s.spec for s in self._slots)) and not stop_event.is_set():
                broken = self._broken()
                if broken:
                    for spec in list(todo) + [s.spec for s in self._slots if s.spec]:
                        on_outcome(Outcome(spec.task_id, spec.attempt, FAILED, error=broken))
                    return
                for slot in self._slots:
                    if slot.ready and not slot.dead and slot.spec is None and todo:
                        slot.spec = todo.popleft()
                        slot.refs[slot.handle.run.remote(slot.spec)] = "run"
                self._ask()
                waiting = {ref: slot for slot in self._slots for ref in slot.refs}
                done, _ = ray.wait(list(waiting), num_returns=1, timeout=POLL_S)
                for ref in done:
                    self._handle(waiting[ref], ref, on_progress, on_outcome, todo)
        finally:
            self._kill_actors()

    def _broken(self) -> str | None:
        """Why no actor can run a spec, or None."""
        if self._slots and all(s.dead for s in self._slots):
            return self._slots[0].dead
        return None

    def _ask(self) -> None:
        """Busy actors: their progress, once a second; restarting actors: whether they are ready again."""
        now = time.monotonic()
        for slot in self._slots:
            if slot.ask_ready_at is not None and now >= slot.ask_ready_at:
                slot.ask_ready_at = None
                slot.refs[slot.handle.ready.remote()] = "ready"
            if slot.spec is not None and slot.progress_ref is None and now - slot.progress_at >= PROGRESS_S:
                slot.progress_ref = slot.handle.progress.remote()
                slot.refs[slot.progress_ref] = "progress"
                slot.progress_at = now

    def _handle(self, slot: _Slot, ref, on_progress, on_outcome, todo: collections.deque) -> None:
        kind = slot.refs.pop(ref)
        try:
            value = ray.get(ref)
        except RayError as exc:
            if kind == "progress":
                slot.progress_ref = None
            elif kind == "run":
                self._crashed(slot, exc, on_outcome, todo)
            elif isinstance(exc, ActorUnavailableError):  # restarting: ask again soon
                slot.ask_ready_at = time.monotonic() + RESTART_POLL_S
            else:
                slot.dead = f"the Ray actor died and has no restarts left ({_short(exc)})"
                logger.warning("Ray actor %d: %s", slot.index, slot.dead)
            return
        if kind == "ready":
            if value is None:
                slot.ready = True
            else:  # the model cannot load: not worth a restart
                slot.dead = f"the worker cannot start: {value}"
        elif kind == "progress":
            slot.progress_ref = None
            if value is not None and slot.spec is not None and \
                    (value.task_id, value.attempt) == (slot.spec.task_id, slot.spec.attempt):
                on_progress(value)
        else:
            slot.spec = None
            retry = on_outcome(value)
            if retry is not None:
                todo.append(retry)

    def _crashed(self, slot: _Slot, exc: BaseException, on_outcome, todo: collections.deque) -> None:
        """The actor died while it held a spec: its outcome is `crashed`; wait for Ray's restart."""
        spec, slot.spec, slot.ready = slot.spec, None, False
        logger.warning("Ray actor %d died while tracking task %s: %s", slot.index, spec.task_id, _short(exc))
        for stale in [r for r, k in slot.refs.items() if k == "progress"]:
            del slot.refs[stale]
        slot.progress_ref = None
        slot.refs[slot.handle.ready.remote()] = "ready"
        retry = on_outcome(Outcome.crashed(spec, f"Ray actor died ({_short(exc)})"))
        if retry is not None:
            todo.appendleft(retry)

    def _kill_actors(self) -> None:
        """End every actor (a busy one's task writes nothing: its prediction is written only when whole)."""
        for slot in self._slots:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # already gone
                logger.debug("ray.kill", exc_info=True)
        self._slots = []

    def close(self) -> None:
        self._kill_actors()
        if self._connected:
            ray.shutdown()
            self._started_ray = self._connected = False


def _wants_cpu(factory) -> bool:
    settings = getattr(factory, "settings", None)
    return settings is not None and settings.device == "cpu"


ENGINE = RayEngine
