"""Bounded model concurrency: one semaphore per device around forward passes, and torch's CPU threads.

Request threads, tracking threads and prewarm threads all run the model. Without a bound they run at once and
each forward pass competes for the same cores (CPU) or memory (GPU). `forward(device)` admits one pass per
device at a time (waiters queue in arrival order of the OS lock); passes are short (one frame, one prompt), so
long work interleaves with interactive work frame by frame. `configure_threads` gives torch the process's share
of the cores once, at model load.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

_gates: dict[str, threading.Semaphore] = {}
_gates_lock = threading.Lock()


def device_gate(device: torch.device | str) -> threading.Semaphore:
    """The one semaphore of `device` ("cuda" and "cuda:0" are the same device)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    with _gates_lock:
        return _gates.setdefault(str(dev), threading.Semaphore(1))


@contextlib.contextmanager
def forward(device: torch.device | str, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """One forward pass on `device`: its gate held, inference mode, autocast to `dtype` unless float32."""
    cast = (contextlib.nullcontext() if dtype == torch.float32
            else torch.autocast(device_type=torch.device(device).type, dtype=dtype))
    with device_gate(device), torch.inference_mode(), cast:
        yield


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(processes: int = 1, threads: int | None = None) -> int:
    """torch intra-op threads: `threads`, else this process's share of the cores when `processes` model
    processes share them. Returns the number set."""
    n = threads if threads and threads > 0 else max(1, available_cores() // max(1, processes))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        logger.info("torch uses %d threads (%d cores, %d model processes)", n, available_cores(), processes)
    return n
