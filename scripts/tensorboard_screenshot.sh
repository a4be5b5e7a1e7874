#!/usr/bin/env bash
# Make docs/tensorboard-quickstart.png: train the quick start with [log] trackers = ["tensorboard"], serve its
# event folder with TensorBoard on localhost, and shoot the scalars with headless Chromium (Debian: apt-get
# install chromium). Needs pace and tensorboard on PATH (e.g. PATH=.venv/bin:$PATH).
#
#   bash scripts/tensorboard_screenshot.sh [OUTPUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
output=${1:-docs/tensorboard-quickstart.png}
work=$(mktemp -d)
port=${PORT:-6006}
cleanup() { [ -n "${board:-}" ] && kill "$board" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

pace train recipes/quickstart.toml -o "$work/quickstart" --set 'log.trackers=["tensorboard"]' --json > /dev/null
tensorboard --logdir "$work/quickstart/tensorboard" --host 127.0.0.1 --port "$port" > "$work/tensorboard.log" 2>&1 &
board=$!
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/data/plugins_listing" > /dev/null && break
  sleep 1
done
# Only the step/* and epoch/* charts: the filter is the page's own search box, set through its URL.
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$work/chromium" --hide-scrollbars \
  --window-size=1400,900 --virtual-time-budget=15000 --screenshot="$output" \
  "http://127.0.0.1:$port/?smoothing=0#timeseries"
echo "wrote $output"
