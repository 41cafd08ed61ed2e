#!/bin/sh
# The wse-server peer's own virtualenv, benches/.venv-wse-server: wse-server ships wheels for
# CPython >= 3.12 only (cp312-abi3), while the suite may run on an older interpreter.
# benches/run.py runs the "wse-server" peer with this environment's python when it exists.
#
#   sh benches/peers/wse_server_setup.sh [PYTHON]   # PYTHON: a CPython >= 3.12
set -eu
WSE_SERVER_VERSION=2.5.1
venv="$(cd "$(dirname "$0")/.." && pwd)/.venv-wse-server"
newer() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
python=${1:-}
if [ -z "$python" ]; then
    # on PATH, then any interpreter pyenv installed (not on PATH unless selected)
    for candidate in python3.14 python3.13 python3.12 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python; do
        if newer "$candidate"; then python=$candidate; break; fi
    done
fi
if [ -z "$python" ] || ! newer "$python"; then
    echo "wse_server_setup.sh: no CPython >= 3.12 found; pass one as the first argument" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "wse-server==$WSE_SERVER_VERSION"
echo "wse-server $WSE_SERVER_VERSION in $venv"
