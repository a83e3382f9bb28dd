#!/usr/bin/env bash
# The performance benchmark (benchmarks/perf/) on a GPU machine: device cuda, bfloat16.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: $OUT or benchmarks/results
#
# Writes perf-<model>-cuda.json/.md for liteembed-tiny and ViT-B-32 (random weights: speed only)
# and a log. Needs no network and no database server: SQLite and the in-process worker, as the
# CPU run. The machine must already have the project's Python packages (torch with CUDA,
# open_clip, fastapi, uvicorn, sqlalchemy, dramatiq, httpx); the script checks before running.
# Budget: about 6-8 minutes on one modern GPU, most of it server start-ups and the 100k-class
# inserts; PERF_QUICK=1 halves it (fewer rounds, shorter windows, sizes up to 10k).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

{
  echo "== $(date -u +%FT%TZ) gpu_check on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" - <<'PYEOF'
import importlib, sys
missing = [m for m in ("torch", "open_clip", "fastapi", "uvicorn", "sqlalchemy", "dramatiq", "httpx",
                       "pydantic_settings", "multipart", "alembic") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (install the project first)")
import torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0),
      "bf16" if torch.cuda.is_bf16_supported() else "fp16 only")
PYEOF
} 2>&1 | tee "$LOG"

PRECISION=bf16
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_bf16_supported() else 1)'; then
  PRECISION=fp16
fi
ARGS=(--device cuda --precision "$PRECISION")
if [[ "${PERF_QUICK:-0}" == "1" ]]; then
  ARGS+=(--rounds 2 --seconds 2 --sizes 10,1000,10000)
else
  ARGS+=(--rounds 3 --seconds 3)
fi
NOTE="GPU run via benchmarks/gpu_check.sh ($PRECISION); class matrix product and top-k on the GPU."
for MODEL in liteembed-tiny ViT-B-32; do
  echo "== $MODEL" | tee -a "$LOG"
  "$PY" -m benchmarks.perf --model "$MODEL" "${ARGS[@]}" --note "$NOTE" \
    --out "$OUT_DIR/perf-$MODEL-cuda.json" 2>&1 | tee -a "$LOG"
done
echo "== done: $OUT_DIR" | tee -a "$LOG"
