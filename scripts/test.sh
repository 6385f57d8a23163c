#!/usr/bin/env bash
# The project's one test command: `bash scripts/test.sh [pytest args...]`.
#
# Creates (or reuses) the virtualenv .venv in the repository root, installs requirements.txt,
# requirements-dev.txt and the test oracle (Meta's reference sam2==1.1.0, tests only), then runs
# `python -m pytest` with the given arguments. The install is skipped when a stamp file in .venv
# matches the hash of the requirements files, so a second run starts testing at once.
# pytest exits 5 when it collects no test; that status is passed on, so such a run fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="$PWD/.venv"
PYTHON="${SAM2_TEST_PYTHON:-python3}"  # the interpreter that creates .venv
ORACLE="sam2==1.1.0"
STAMP="$VENV/.installed-requirements"

# The CPU torch wheel lies here on this project's machines; pip is usually already told so.
PIP_ARGS=(--quiet)
if [[ -d /opt/wheels ]]; then
    PIP_ARGS+=(--find-links /opt/wheels)
fi

pip_install() {
    # Drops the noise about missing local index folders that this machine's pip config names.
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" "$@" 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
}

if ! "$VENV/bin/python" -c "" 2>/dev/null; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

wanted="$( { cat requirements.txt requirements-dev.txt; echo "$ORACLE"; "$VENV/bin/python" -V; } | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]]; then
    echo "test.sh: installing dependencies into $VENV ..."
    start=$SECONDS
    rm -f "$STAMP"
    pip_install -r requirements.txt -r requirements-dev.txt
    # The oracle's declared dependencies would pull torchvision and a CUDA torch, and build isolation a
    # second torch: install it alone, built against the venv's torch, without its CUDA extension.
    SAM2_BUILD_CUDA=0 pip_install --no-deps --no-build-isolation "$ORACLE"
    "$VENV/bin/python" -c "import torch; print('test.sh: torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
    echo "$wanted" > "$STAMP"
    echo "test.sh: dependencies installed in $((SECONDS - start)) s"
fi

# Chromium, Label Studio 1.23.2 (own venv) and the lint tools for the end-to-end tests; a no-op when present.
bash scripts/e2e_setup.sh "$VENV/bin/python"

exec "$VENV/bin/python" -m pytest "$@"
