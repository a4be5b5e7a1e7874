#!/usr/bin/env bash
# Create (or reuse) .venv, install pace, and run the quick start end to end:
# train adapters with PACE on 8-shot digits, merge them into the shipped backbone, evaluate on test.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PACE_VENV:-.venv}
OUT=${1:-runs/quickstart}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e .
pace="$VENV/bin/pace"
"$pace" train recipes/quickstart.toml --output-dir "$OUT" --overwrite
"$pace" merge builtin:fmnist_vit "$OUT/adapter.safetensors" --output "$OUT/merged.safetensors" --overwrite
"$pace" eval recipes/quickstart.toml --weights "$OUT/merged.safetensors"
