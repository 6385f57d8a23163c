"""Deployment configuration: settings from environment variables and the gunicorn config."""
