# Sourced by scripts/test.sh and scripts/serve.sh (from the repository root): the virtualenv and its installs.
#
# After `source scripts/venv.sh`, $VENV (SAM2_VENV, default .venv in the repository root) holds a working
# Python, created with $SAM2_PYTHON (default python3) when missing or broken, and these are defined:
#   pip_install ARGS...             pip install into $VENV, quietly (finds /opt/wheels' CPU torch when present)
#   venv_sync NAME INSTALL < TEXT   runs the function INSTALL unless $VENV/.installed-NAME holds the hash of
#                                   TEXT (the requirements it installs) and of the Python version; then stores it.
#   venv_mark NAME < TEXT           records TEXT as installed under NAME without installing anything.

VENV="${SAM2_VENV:-$PWD/.venv}"

# The CPU torch wheel lies here on this project's machines; pip is usually already told so.
PIP_ARGS=(--quiet)
if [[ -d /opt/wheels ]]; then
    PIP_ARGS+=(--find-links /opt/wheels)
fi

pip_install() {
    # Drops the noise about missing local index folders that this machine's pip config names.
    "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" "$@" 2>&1 | sed '/is ignored: it is neither a file nor a directory/d'
    return "${PIPESTATUS[0]}"
}

_venv_hash() {
    { cat; "$VENV/bin/python" -V; } | sha256sum | cut -d' ' -f1
}

venv_mark() {
    _venv_hash > "$VENV/.installed-$1"
}

venv_sync() {
    local stamp="$VENV/.installed-$1" wanted start=$SECONDS
    wanted="$(_venv_hash)"
    [[ "$(cat "$stamp" 2>/dev/null)" == "$wanted" ]] && return 0
    echo "$(basename "$0"): installing dependencies into $VENV ..."
    rm -f "$stamp"
    "$2"
    echo "$wanted" > "$stamp"
    echo "$(basename "$0"): dependencies installed in $((SECONDS - start)) s"
}

if ! "$VENV/bin/python" -c "" 2>/dev/null; then
    rm -rf "$VENV"
    "${SAM2_PYTHON:-python3}" -m venv "$VENV"
fi
