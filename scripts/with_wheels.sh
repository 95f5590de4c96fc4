#!/usr/bin/env bash
# Run a command with the wheels of the git-ignored .whl/ importable (README: "GPU check"): on a machine without
# network (a lent GPU), the packages its image lacks (fugashi, unidic-lite, PyWavelets, cut-cross-entropy;
# scripts/prepare_device.sh downloads them) are installed offline into a private folder put first on
# PYTHONPATH, then the command runs. Wheels that do not install (built for another Python) leave the path as
# it was: the command runs with what the machine has. Usage: bash scripts/with_wheels.sh python3 run_matrix.py ...
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
    SITE="${WAVEBENCH_WHEEL_SITE:-/tmp/wavebench-site}"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else  # e.g. wheels for another Python: go on with what this one has (a GPU check's report lists what is missing)
        echo "warning: the wheels in .whl/ did not install here; going on without them" >&2
    fi
fi
exec "$@"
