#!/usr/bin/env bash
# The GPU check inside a lent device machine's `run` (README: "GPU check"): install the carried wheels,
# run the check's parts (arguments go to benchmarks.gpu_check, e.g. --parts cuda_tests,grid), and pack
# its folder into $OUT, since a run returns at most 8 files. The folder (git-ignored runs/gpu_check by
# default) stays on a warm machine, so a second command adds its parts to the same report; if the machine
# went back in between, the second archive holds only its own parts, and `python -m benchmarks.gpu_check
# --merge first.tgz second.tgz --out gpu_check` joins them here (each part's record is its own file).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
DEST="${GPU_CHECK_DIR:-runs/gpu_check}"
# every part stops by this deadline, so the archive below is made before the device's command limit (run
# it with timeout_s 600): a command killed at its limit would bring nothing back. It replaces the check's
# default 8-minute box (--minutes 0), which would cut the first command's 540 s of parts short. For a second
# command, set GPU_CHECK_SECONDS below the device's time left (status: budget_left_s), which may be less
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-570} ))
# the archive is also rewritten after every part (--pack): stopped at the device's limit, a command still
# returns the parts it finished (the device returns what is under $OUT)
PACK=()
[ -n "${OUT:-}" ] && PACK=(--pack "$OUT/gpu_check.tgz")
echo "[device_gpu_check] deadline in ${GPU_CHECK_SECONDS:-570} s (GPU_CHECK_SECONDS)"
bash scripts/gpu_check.sh --out "$DEST" --minutes 0 --deadline-at "$DEADLINE" ${PACK[@]+"${PACK[@]}"} "$@"
rc=$?
if [ -n "${OUT:-}" ] && [ -d "$DEST" ]; then
    tar czf "$OUT/gpu_check.tgz" -C "$DEST" .  # the folder's contents, unpacked by --merge into any --out
    cp "$DEST/README.md" "$OUT/README.md" 2>/dev/null || true
fi
exit $rc
