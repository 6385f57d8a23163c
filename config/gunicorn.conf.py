"""gunicorn settings: `gunicorn --config config/gunicorn.conf.py backend.wsgi:app`.

gthread workers: each of WORKERS processes loads the model once (lazily, on the first request that needs it)
and serves THREADS requests at a time. Video sessions live in a worker's memory, so with several workers a
task's requests may land on different workers, each keeping its own session (correct, but the work is not
shared). One worker with several threads is the recommended setup for one GPU.
Invalid settings or a missing/unreadable SAM2_CHECKPOINT stop the start with a one-line message and exit
status 1 (before any worker starts).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config.settings import Settings, SettingsError  # noqa: E402


def _startup_settings() -> Settings:
    """The settings, with the checkpoint checked; exit 1 with a clear message when they cannot serve."""
    try:
        settings = Settings.from_env()
        if settings.sam2_checkpoint:  # memory-mapped: the weights are read on first use, in the worker
            from sam2_model import CheckpointError
            from sam2_model.checkpoint import read_checkpoint
            try:
                read_checkpoint(settings.sam2_checkpoint, mmap=True)
            except CheckpointError as exc:
                raise SettingsError(f"SAM2_CHECKPOINT={settings.sam2_checkpoint!r}: {exc}") from None
    except SettingsError as exc:
        print(f"sam2-backend: cannot start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    return settings


_settings = _startup_settings()

bind = f"0.0.0.0:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
# Label Studio waits up to 100 s for /predict; a worker must never be killed before answering one.
timeout = int(max(_settings.predict_budget_s, _settings.interactive_budget_s)) + 120
graceful_timeout = 30
keepalive = 5
loglevel = _settings.log_level.lower()
accesslog = "-"
errorlog = "-"
