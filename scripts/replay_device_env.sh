#!/usr/bin/env bash
# Replay the lent GPU machine's Python environment on a CPU before its minutes are spent (docs/gpu-check.md: "Before
# the device's minutes"): its torch (PyPI's CUDA build installs and runs without a GPU), hence its Triton,
# and its Python, with the wheels that travel in .whl/. CI has other releases (torch 2.13, Triton 3.9), and
# a replay found what CI could not: a torch 2.11 compile bug (frozen norms), a Triton 3.6 interpreter
# signature, Triton 3.6's PTX, a pytest 9.2 change that hid torch config entries.
#
#   bash scripts/replay_device_env.sh tests              # the test suite in the replica
#   bash scripts/replay_device_env.sh dry-run            # the device's two GPU-check commands, on CPU
#
# DEVICE_PYTHON (python3.12), DEVICE_TORCH (2.11.0) and REPLICA (/tmp/wavebench-replica, kept and reused)
# change what is replayed. NumPy stays below 2.4 (the device has 2.5), so that the Triton interpreter
# suites run under Triton 3.6 instead of skipping. About 4.6 GB in the venv; minutes, from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-tests}"
VENV="${REPLICA:-/tmp/wavebench-replica}"
TORCH="${DEVICE_TORCH:-2.11.0}"
if [ ! -x "$VENV/bin/python" ]; then
    "${DEVICE_PYTHON:-python3.12}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
    "$PY" -m pip install -q "torch==$TORCH" "numpy<2.4" pandas matplotlib seaborn sentencepiece tqdm pytest \
        pytest-timeout
fi
case "$WHAT" in
    tests)
        # the wheels the device gets from .whl/ (prepare_device.sh makes them, for Python 3.12), else PyPI's
        if compgen -G ".whl/*.whl" > /dev/null && "$PY" -m pip install -q --no-index --no-deps .whl/*.whl; then :
        else "$PY" -m pip install -q fugashi unidic-lite PyWavelets cut-cross-entropy; fi
        "$PY" -c "import torch, triton, numpy, pytest; print('replica: torch', torch.__version__, '| Triton',
            triton.__version__, '| NumPy', numpy.__version__, '| pytest', pytest.__version__)"
        exec "$PY" -m pytest -q -p no:cacheprovider "${@:2}"
        ;;
    dry-run)
        # both device commands on one folder, as on a machine that stayed warm, with CPU-sized limits
        export PYTHON="$PY" GPU_CHECK_SECONDS="${GPU_CHECK_SECONDS:-3000}"
        export WAVEBENCH_COMMIT="${WAVEBENCH_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
        bash scripts/device_gpu_check.sh --cpu-dry-run --parts cuda_tests,grid,grid_base,bench_scaling,bench_loss_memory
        bash scripts/device_gpu_check.sh --cpu-dry-run \
            --parts grid_resume,grid_sdpa_cudnn,grid_graphs,grid_model_scope,bench_scan_stages
        ;;
    *)
        echo "usage: bash scripts/replay_device_env.sh tests [pytest args] | dry-run" >&2
        exit 2
        ;;
esac
