#!/usr/bin/env bash
# Prepare, on a machine with network, what a GPU machine without network needs for the GPU check
# (README: "GPU check"), all in git-ignored folders that travel with the checkout:
#   .whl/        wheels of the packages a CUDA image lacks (fugashi, unidic-lite, PyWavelets, cut-cross-entropy)
#   data/        the JSQuAD files, and data/cache/ with the tokenizers the check's presets use (trained here
#                once, so the GPU's minutes are not spent on SentencePiece) and the training passages
#                tokenised for the check's pretraining stage (`--pretrain passages`, MeCab: a CPU's work)
# Usage: bash scripts/prepare_device.sh [SHARED_DATA_DIR]   (default ../shared/data)
# The GPU machine's Python is 3.12 by default; set GPU_PYTHON=3.11 (etc.) for another.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${1:-../shared/data}"
PYV="${GPU_PYTHON:-3.12}"
PY="${PYTHON:-python3}"
if [ ! -d "$SHARED/jsquad-v1.3" ]; then
    echo "error: no $SHARED/jsquad-v1.3 (pass the folder holding jsquad-v1.3 as the first argument)" >&2
    exit 2
fi
mkdir -p .whl data
# binary wheels for the GPU machine's Python and x86-64 Linux (no dependencies: the image has torch,
# triton and numpy; check a wheel's needs with `unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist`)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl fugashi PyWavelets cut-cross-entropy
# unidic-lite is published as a source archive only: build its (pure-Python, data-only) wheel here
"$PY" -m pip wheel -q --no-deps -w .whl unidic-lite
rm -rf data/jsquad-v1.3
cp -r "$SHARED/jsquad-v1.3" data/
# the tokenizers of the check's grids (small: 8k, base: 16k), trained on the offline protocol's training split,
# and with each the passages the grids pretrain on, tokenised and cached (harness/pretrain.py)
"$PY" - <<'PY'
from pathlib import Path

import tasks
from core.presets import get_preset
from harness import pretrain
from tasks import PrepareContext

for preset in ("small", "base"):
    p = get_preset(preset)
    data = tasks.build("jsquad").prepare(PrepareContext(Path("data/jsquad-v1.3"), Path("data/cache"), p.vocab_size,
                                                        p.max_len))
    pretrain.prepare(pretrain.PretrainSpec(["passages"]), data, Path("data/cache"), p.max_len)
PY
du -sh .whl data
ls .whl
