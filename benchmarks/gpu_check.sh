#!/usr/bin/env bash
# The performance benchmark (benchmarks/perf/) on a GPU machine: device cuda, bfloat16.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: $OUT or benchmarks/results
#
# Runs the classify, training and scale parts (PERF_PARTS to change) and writes
# perf-<model>-cuda.json/.md for liteembed-tiny and ViT-B-32 (random weights: speed only) and a
# log. Needs no network and no database server: SQLite and the in-process worker, as the CPU run.
# It uses the machine's own CUDA torch (torchvision, numpy, pillow with it); the rest of the
# project's packages it installs offline from .whl/ when that folder is there (made beforehand,
# on a machine with a package index, by benchmarks/gpu_wheels.sh), and the project's own three
# packages are used from this checkout (PYTHONPATH). It checks before running.
# Budget: about 6-8 minutes on one modern GPU, most of it server start-ups, ViT-B-32's vocabulary
# cache and the 100k-class inserts; PERF_QUICK=1 halves it (fewer rounds, shorter windows, sizes
# up to 10k).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
# The engine and the client from this checkout, whether or not they are installed.
export PYTHONPATH="$PWD:$PWD/engine:$PWD/client${PYTHONPATH:+:$PYTHONPATH}"
NEEDED='import open_clip, fastapi, uvicorn, sqlalchemy, dramatiq, alembic, httptools, multipart'
if ! "$PY" -c "$NEEDED" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  # --no-deps: every wheel needed is in the folder, and the image's torch must stay as it is.
  "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check .whl/*.whl \
    2>&1 | tee -a "$LOG"
fi

{
  echo "== $(date -u +%FT%TZ) gpu_check on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" - <<'PYEOF'
import importlib, sys
missing = [m for m in ("torch", "open_clip", "fastapi", "uvicorn", "sqlalchemy", "dramatiq", "httpx",
                       "pydantic_settings", "multipart", "alembic", "httptools", "uvloop",
                       "liteembed", "liteembed_client")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (install the project first)")
import torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0),
      "bf16" if torch.cuda.is_bf16_supported() else "fp16 only")
PYEOF
} 2>&1 | tee -a "$LOG"

PRECISION=bf16
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_bf16_supported() else 1)'; then
  PRECISION=fp16
fi
ARGS=(--device cuda --precision "$PRECISION" --parts "${PERF_PARTS:-classify,training,scale}")
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
