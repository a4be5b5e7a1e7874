#!/usr/bin/env bash
# Make docs/tensorboard-quickstart.png: train the quick start with [log] trackers = ["tensorboard"], serve its
# event folder with TensorBoard on localhost, and shoot the scalars with headless Chromium (Debian: apt-get
# install chromium) driven by Playwright (pip install playwright; scripts/tensorboard_screenshot.py).
# Needs pace and tensorboard on PATH (e.g. PATH=.venv/bin:$PATH); PLAYWRIGHT_PYTHON: a Python with Playwright.
#
#   bash scripts/tensorboard_screenshot.sh [OUTPUT.png [RUN_FOLDER]]
#
# RUN_FOLDER: a quick-start run already trained with that tracker, shot instead of training a new one.
set -euo pipefail
cd "$(dirname "$0")/.."
output=${1:-docs/tensorboard-quickstart.png}
work=$(mktemp -d)
run=${2:-$work/quickstart}
port=${PORT:-6006}
cleanup() { [ -n "${board:-}" ] && kill "$board" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

if [ -z "${2:-}" ]; then
  pace train recipes/quickstart.toml -o "$run" --set 'log.trackers=["tensorboard"]' --json > /dev/null
fi
tensorboard --logdir "$run/tensorboard" --host 127.0.0.1 --port "$port" > "$work/tensorboard.log" 2>&1 &
board=$!
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/data/plugins_listing" > /dev/null && break
  sleep 1
done

tags='val_top1|val_loss|train_top1|step/loss|step/ce|step/consistency'
"${PLAYWRIGHT_PYTHON:-python3}" scripts/tensorboard_screenshot.py \
  "http://127.0.0.1:$port/?forceSVG=true&smoothing=0&tagFilter=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$tags")#timeseries" \
  "$output"
echo "wrote $output"
