#!/usr/bin/env bash
# The GPU check in one command (README: "GPU check"). Wheels of missing packages (fugashi, unidic-lite,
# PyWavelets, cut-cross-entropy) placed in the git-ignored .whl/ are installed first, without network,
# into a private folder on PYTHONPATH; then `python -m benchmarks.gpu_check` runs with the arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# the check's time box (benchmarks.gpu_check --minutes) counts from here, the wheels' install included
export WAVEBENCH_CHECK_STARTED="${WAVEBENCH_CHECK_STARTED:-$(date +%s)}"
if compgen -G ".whl/*.whl" > /dev/null; then
    SITE="${WAVEBENCH_WHEEL_SITE:-/tmp/wavebench-site}"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else  # e.g. wheels for another Python: go on with what this one has (the report lists what is missing)
        echo "warning: the wheels in .whl/ did not install here; going on without them" >&2
    fi
fi
exec "$PY" -m benchmarks.gpu_check "$@"
