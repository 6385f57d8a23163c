#!/usr/bin/env bash
# The project's one test command: `bash scripts/test.sh [pytest args...]`.
#
# Creates (or reuses) the virtualenv .venv in the repository root (scripts/venv.sh), installs requirements.txt,
# requirements-dev.txt, requirements-ray.txt (the optional Ray engine: its tests start a real Ray) and the test
# oracle (Meta's reference sam2==1.1.0, tests only), then runs `python -m pytest` with the given arguments.
# The install is skipped when a stamp file in .venv matches the hash of the requirements files, so a second
# run starts testing at once.
# pytest exits 5 when it collects no test; that status is passed on, so such a run fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SAM2_PYTHON="${SAM2_TEST_PYTHON:-python3}"  # the interpreter that creates .venv
ORACLE="sam2==1.1.0"
# shellcheck source=scripts/venv.sh
source scripts/venv.sh

install_test_dependencies() {
    pip_install -r requirements.txt -r requirements-dev.txt -r requirements-ray.txt
    # The oracle's declared dependencies would pull torchvision and a CUDA torch, and build isolation a
    # second torch: install it alone, built against the venv's torch, without its CUDA extension.
    SAM2_BUILD_CUDA=0 pip_install --no-deps --no-build-isolation "$ORACLE"
    "$VENV/bin/python" -c "import torch; print('test.sh: torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
}

venv_sync requirements install_test_dependencies \
    < <(cat requirements.txt requirements-dev.txt requirements-ray.txt; echo "$ORACLE")
venv_mark runtime < requirements.txt  # what scripts/serve.sh installs is in: it need not install again

# Chromium, Label Studio 1.23.2 (own venv) and the lint tools for the end-to-end tests; a no-op when present.
bash scripts/e2e_setup.sh "$VENV/bin/python"

exec "$VENV/bin/python" -m pytest "$@"
