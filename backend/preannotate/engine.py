"""The Engine protocol (contract: see the package docstring) and the registry of engines by name."""
from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from .spec import FrameProgress, JobSpec, Outcome
from .worker import WorkerFactory

ENGINES = ("local", "ray")  # module backend.preannotate.<name>_engine, class ENGINE in it


class Engine(Protocol):
    """Runs tracking jobs on workers; see the package docstring for what runs where."""

    name: str

    def run(self, specs: Sequence[JobSpec], worker_factory: WorkerFactory,
            on_progress: Callable[[FrameProgress], None],
            on_outcome: Callable[[Outcome], JobSpec | None],
            stop_event: threading.Event) -> None:
        """Run every spec (and the retries on_outcome returns) until all have outcomes or stop_event is set."""

    def close(self) -> None:
        """Release the engine's processes / cluster connection."""


class EngineError(RuntimeError):
    """An engine cannot be built (unknown name, optional dependency missing, cluster unreachable)."""


def get_engine(name: str, workers: int | None = None, **options) -> Engine:
    """The engine `name` ("local" or "ray"), built as `module.ENGINE(workers=workers, **options)`.
    options: engine-specific, e.g. ray's `address`."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
    try:
        module = importlib.import_module(f"{__package__}.{name}_engine")
    except ImportError as exc:
        raise EngineError(f"engine {name!r} is not available ({exc}); see README 'Pre-annotating a project'") from exc
    return module.ENGINE(workers=workers, **options)
