#!/usr/bin/env bash
# Builds the Python package into a venv of its own (VENV, default target/py-venv) and runs
# its tests: numpy and pytest only.
#   python/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/target/py-venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q numpy pytest "maturin>=1.9,<2"
(cd python && VIRTUAL_ENV="$VENV" "$VENV/bin/maturin" develop -q)
"$VENV/bin/python" -m pytest -q python/tests "$@"
