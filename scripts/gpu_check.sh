#!/usr/bin/env bash
# The GPU check in one command (README: "GPU check"). Wheels of missing packages (fugashi, unidic-lite,
# PyWavelets, cut-cross-entropy) placed in the git-ignored .whl/ are installed first, without network,
# into a private folder on PYTHONPATH (scripts/with_wheels.sh); then `python -m benchmarks.gpu_check` runs
# with the arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# the check's time box (benchmarks.gpu_check --minutes) counts from here, the wheels' install included
export WAVEBENCH_CHECK_STARTED="${WAVEBENCH_CHECK_STARTED:-$(date +%s)}"
exec bash scripts/with_wheels.sh "$PY" -m benchmarks.gpu_check "$@"
