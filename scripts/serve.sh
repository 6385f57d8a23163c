#!/usr/bin/env bash
# Installs and starts the backend: `bash scripts/serve.sh [gunicorn args...]`.
#
# Creates (or reuses) the virtualenv .venv (SAM2_VENV) and installs requirements.txt into it (skipped when
# done: scripts/venv.sh), resolves the checkpoint (SAM2_CHECKPOINT, else the official SAM2_MODEL, default
# sam2.1_hiera_tiny, fetched once into SAM2_CACHE_DIR and verified: backend/weights.py), then runs
# `gunicorn --config config/gunicorn.conf.py backend.wsgi:app` on port PORT (default 9090). Every other
# setting is an environment variable (README.md, config/settings.py).
set -euo pipefail

# Paths given relative to where the command was typed keep meaning that after the cd below.
for name in SAM2_CHECKPOINT SAM2_CACHE_DIR MEDIA_CACHE_DIR SAM2_VENV; do
    if [[ -n "${!name:-}" ]]; then
        export "$name=$(realpath -m -- "${!name}")"
    fi
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/venv.sh
source scripts/venv.sh

install_runtime() {
    pip_install -r requirements.txt
}

venv_sync runtime install_runtime < requirements.txt

exec "$VENV/bin/python" -m backend.weights --exec "$VENV/bin/python" -m gunicorn \
    --config config/gunicorn.conf.py backend.wsgi:app "$@"
