#!/usr/bin/env bash
# The GPU check in one short call: install what the machine lacks from a prepared wheel folder
# (no package index there; its own torch stays), then run bench/gpu_check.py (the tiny chain on
# the device, train_step at batch 2 and the largest that fits, the memory plan against the
# measured peak), writing gpu_check.json / .md / .log to $OUT (or --out DIR).
#
#   make gpu-wheels                                   # here, with network: fills .whl/ (< 64 MiB)
#   bench/gpu_check.sh                                # there: --device cuda, OUT=$OUT
#   bench/gpu_check.sh --device cpu --out /tmp/r --methods genhancer   # rehearsal on a CPU
#
# Options after the script's own (--wheels DIR, --python PY) go to bench/gpu_check.py.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS="$REPO/.whl"
PY="${PYTHON:-python3}"
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
SITE="${GPU_CHECK_SITE:-/tmp/genhancer-gpu-site}"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  start=$(date +%s)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHEELS"/*.whl || { echo "gpu_check: installing $WHEELS failed" >&2; exit 3; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  GPU_CHECK_WHEELS="$(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
  export GPU_CHECK_WHEELS
  echo "gpu_check: installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS in $(( $(date +%s) - start )) s" >&2
else
  echo "gpu_check: no wheels in $WHEELS; using the packages already installed" >&2
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$REPO/bench/gpu_check.py" ${ARGS[@]+"${ARGS[@]}"}
