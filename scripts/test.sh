#!/usr/bin/env bash
# Create (or reuse) .venv, install pace with its test extras, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PACE_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[test]'
exec "$VENV/bin/python" -m pytest "$@"
