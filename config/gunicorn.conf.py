"""gunicorn settings: `gunicorn --config config/gunicorn.conf.py backend.wsgi:app`.

gthread workers: each of WORKERS processes loads the model once (lazily, on the first request that needs it)
and serves THREADS requests at a time. Video sessions live in a worker's memory, so with several workers a
task's requests may land on different workers, each keeping its own session (correct, but the work is not
shared). One worker with several threads is the recommended setup for one GPU.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config.settings import Settings  # noqa: E402

_settings = Settings.from_env()

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
