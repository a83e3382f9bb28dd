# The LiteEmbed image: CPU torch by default. The GPU image is this file with one argument,
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 -t liteembed:gpu .
# The CUDA torch wheel carries its CUDA runtime as pip packages, so the Python 3.11 base stays; the
# host needs only the NVIDIA driver and the NVIDIA container toolkit.
# BASE_IMAGE: any Debian-like image with python3.11 and its venv module (python:3.11-slim).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PYPI_INDEX=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_INDEX_URL=${PYPI_INDEX} \
    VIRTUAL_ENV=/opt/liteembed \
    PATH=/opt/liteembed/bin:${PATH}

# A virtual environment behaves the same on python:3.11-slim and on a distribution's python3.11,
# whose system pip refuses to install packages.
RUN python3 -m venv /opt/liteembed
WORKDIR /app

# Dependencies first, in their own layers: an edit of the source rebuilds only the layers below.
# torch first, from TORCH_INDEX (whose local build, +cpu or +cu130, sorts above PyPI's plain
# one), keyed on its version alone so that a change of another dependency does not download it
# again. The versions are constraints.txt's pins; the next layer fails when they differ.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
RUN pip install --extra-index-url "${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
# Every other dependency of the three distributions (engine/, client/ and the server at the
# root), pinned by constraints.txt; the three themselves are installed from the source below.
COPY constraints.txt pyproject.toml ./
COPY engine/pyproject.toml ./engine/
COPY client/pyproject.toml ./client/
RUN python -c "import tomllib; p = [tomllib.load(open(f, 'rb'))['project'] for f in ('pyproject.toml', 'engine/pyproject.toml', 'client/pyproject.toml')]; deps = [d for x in p for d in x['dependencies'] + x.get('optional-dependencies', {}).get('cli', [])]; print('\n'.join(d for d in deps if not d.startswith('liteembed')))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && rm /tmp/requirements.txt

# The source, installed in place (editable: one copy of the code and the shipped checkpoint in the
# image, and `liteembed migrate` finds migrations/ beside it), with the setuptools torch brought:
# a code edit rebuilds in seconds, without the network.
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY engine/liteembed ./engine/liteembed
COPY client/liteembed_client ./client/liteembed_client
COPY testbed ./testbed
COPY service ./service
COPY workers ./workers
COPY cli ./cli
RUN pip install --no-deps --no-build-isolation -e ./engine -e ./client -e .

# Everything the service writes (the SQLite file by default, the vocabulary caches) lives in
# /data: writable by the service user, a volume, and overridable by the settings.
RUN useradd --create-home --uid 10001 liteembed \
    && mkdir -p /data/cache && chown -R liteembed:liteembed /data
ENV LITEEMBED_DATABASE_URL=sqlite:////data/liteembed.db \
    LITEEMBED_CACHE_DIR=/data/cache
USER liteembed
VOLUME ["/data"]
EXPOSE 8000
# Ready means the model is loaded and the database answers; the first start of a large model
# builds its vocabulary cache (minutes), hence the long start period. A worker container has no
# HTTP port: give it `liteembed healthcheck --worker` (docker-compose.yml does).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["liteembed", "serve", "--host", "0.0.0.0", "--port", "8000"]
