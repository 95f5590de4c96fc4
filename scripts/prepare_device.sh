#!/usr/bin/env bash
# Prepare, on a machine with network, what a GPU machine without network needs for the GPU check
# (README: "GPU check"), all in git-ignored folders that travel with the checkout:
#   .whl/        wheels of the packages a CUDA image lacks (fugashi, unidic-lite, PyWavelets, cut-cross-entropy)
#   data/        the JSQuAD files, JaQuAD's xz-compressed (for the main command's JaQuAD twin), and
#                data/cache/ with the tokenizers the check's presets use (trained here once, so the
#                GPU's minutes are not spent on SentencePiece) and the training passages
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
# JaQuAD, for the main command's twin (`--task-opt extra_train=jaquad` reads jaquad-v0.1.0 beside the JSQuAD
# folder): xz-compressed file by file (25 MB of JSON, 4.7 MB so; tasks/jaquad.py reads NAME.json.xz as
# NAME.json), with its README and LICENSE (CC BY-SA 3.0), so that it travels in the 64 MiB carry beside the
# wheels
rm -rf data/jaquad-v0.1.0
if [ -d "$SHARED/jaquad-v0.1.0" ]; then
    "$PY" - "$SHARED/jaquad-v0.1.0" data/jaquad-v0.1.0 <<'PY'
import lzma
import shutil
import sys
from pathlib import Path

src, dest = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(src.rglob("*")):
    out = dest / f.relative_to(src)
    if f.is_dir():
        continue
    out.parent.mkdir(parents=True, exist_ok=True)
    if f.suffix == ".json":
        out.with_name(f.name + ".xz").write_bytes(lzma.compress(f.read_bytes(), preset=9 | lzma.PRESET_EXTREME))
    else:
        shutil.copyfile(f, out)
PY
else
    echo "note: no $SHARED/jaquad-v0.1.0: the JaQuAD twin (--task-opt extra_train=jaquad) will not run on the device"
fi
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
