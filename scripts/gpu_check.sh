#!/usr/bin/env bash
# The GPU check: does the paper-scale path work on this GPU, and how fast is it? (README: "The GPU check")
#
#   scripts/gpu_check.sh RESULTS_DIR [--cpu-smoke] [--wheels DIR] [--stages N ...] [--keep-work]
#
# Stages 1-5 (environment, training speed, evaluator, kill and resume, multi-process), at most 8 minutes on
# one GPU with the offline install of the wheels it finds (--wheels DIR, $GPU_CHECK_WHEELS, .whl/ in the
# checkout, ../wheels beside it); --cpu-smoke runs every stage at toy size on the CPU. Writes
# RESULTS_DIR/gpu_check.json and RESULTS_DIR/logs/; exits non-zero when a stage failed.
# The interpreter: $GPU_CHECK_PYTHON, else the checkout's .venv/bin/python, else python3.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: scripts/gpu_check.sh RESULTS_DIR [--cpu-smoke] [--wheels DIR] [--stages N ...] [--keep-work]" >&2
    exit 2
fi
python="${GPU_CHECK_PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi
if ! command -v "$python" >/dev/null 2>&1; then
    echo "gpu_check.sh: no Python interpreter '$python' (set GPU_CHECK_PYTHON to one that has torch)" >&2
    exit 2
fi
exec "$python" "$repo/scripts/gpu_check.py" "$@"
