#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py and benchmarks/RESULTS.md):
#   bash benchmarks/gpu_check.sh OUT_DIR [--dry-run]
# Installs the wheels carried in .whl/ (make gpu-wheels) when a package they hold is missing,
# then runs every step offline; writes OUT_DIR/gpu_check.json, gpu_check.log, bench_*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_check}"
shift || true
python="${PYTHON:-python3}"
if [ -d .whl ] && ! "$python" -c "import jsonargparse, datasets, mambapy, nltk, bitsandbytes, pytest" 2>/dev/null; then
  site="${TMPDIR:-/tmp}/ssmlora_site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_check.py --out "$out" "$@"
