"""gunicorn entry point: `gunicorn --config config/gunicorn.conf.py backend.wsgi:app`."""
from .app import create_app

app = create_app()
