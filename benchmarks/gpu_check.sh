#!/usr/bin/env bash
# The GPU check (issue 19): install this checkout, run the CUDA tests, the GPU speed and memory
# benchmarks, each step with its own timeout, every number under --out, a short table last.
#
#   benchmarks/gpu_check.sh --out gpu_results                                  # on the GPU machine
#   benchmarks/gpu_check.sh --device cpu --install dry-run --out /tmp/gpu_dry   # the dry run on a CPU
#
# PYTHON=... picks the interpreter (default python3); benchmarks/gpu_check.py --help lists the options.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
exec timeout --kill-after=30 1500 "$PY" benchmarks/gpu_check.py --python "$PY" "$@"
