# CPU image by default; `--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130` (and a
# CUDA base such as nvidia/cuda:13.0.1-runtime-ubuntu24.04 via BASE_IMAGE) builds the GPU image.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LITEEMBED_CACHE_DIR=/data/cache

WORKDIR /app
# torch first and pinned: the registry's unpinned torch is a multi-GB CUDA download.
COPY constraints.txt ./
RUN pip install --index-url ${TORCH_INDEX} --extra-index-url https://pypi.org/simple \
        -c constraints.txt torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY liteembed ./liteembed
COPY service ./service
COPY workers ./workers
COPY cli ./cli
RUN pip install -c constraints.txt .
# Migrations are run from the work dir by `liteembed migrate`.
COPY alembic.ini ./
COPY migrations ./migrations

RUN useradd --create-home --uid 10001 liteembed && mkdir -p /data/cache \
    && chown -R liteembed /data
USER liteembed
VOLUME ["/data"]
EXPOSE 8000
CMD ["liteembed", "serve", "--host", "0.0.0.0", "--port", "8000"]
