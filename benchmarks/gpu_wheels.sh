#!/usr/bin/env bash
# Wheels of the server's Python dependencies for a GPU machine whose image already has CUDA torch
# (torchvision, numpy, pillow) but not the web stack, and that cannot reach a package index:
#
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12, the GPU image's python3
#
# Downloads into .whl/ (git-ignored; small enough to travel with the working tree), pinned to
# constraints.txt, without dependencies: the list below is what the project needs beyond that
# image. benchmarks/gpu_check.sh installs them from there, offline, keeping the image's torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-3.12}"
PACKAGES=(
  open_clip_torch ftfy wcwidth timm fastapi starlette annotated-doc fastapi-offline uvicorn
  httptools uvloop python-multipart pydantic pydantic_core pydantic-settings python-dotenv
  typing-inspection sqlalchemy greenlet alembic Mako dramatiq redis limits deprecated
  threadpoolctl prometheus_client psycopg psycopg-binary annotated-types httpx2 httpcore2
  opentelemetry-api importlib-metadata sniffio truststore
)
PINNED=()
for name in "${PACKAGES[@]}"; do
  pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt | head -1 || true)
  PINNED+=("${pin:-$name}")
done
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl "${PINNED[@]}"
du -sh .whl
