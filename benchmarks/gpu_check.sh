#!/usr/bin/env bash
# GPU self-check, one command on a CUDA machine (from the repository root or anywhere):
#   benchmarks/gpu_check.sh            # equivalence tests on CUDA, then a throughput table
# Without CUDA the tests are reported as skipped (with the reason) and no table is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

"$PYTHON" -m pytest -m cuda -rs tests/test_cuda.py
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    "$PYTHON" benchmarks/gpu_throughput.py "$@"
else
    echo "gpu_check: torch sees no CUDA device; the tests above were skipped and no throughput table was taken" >&2
    exit 3
fi
