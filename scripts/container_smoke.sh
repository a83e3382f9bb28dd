#!/usr/bin/env bash
# Container smoke check, run by hand (takes minutes and a Docker daemon; not part of CI).
#
# From a clean clone of this repository's HEAD it: builds the image (timed), rebuilds it after a
# code edit (timed), checks that `docker run` without keys refuses to serve open, runs it with
# `docker run` and only an admin key until Docker calls it healthy, then brings the compose stack
# up, registers a class over HTTP, waits until it is ready, classifies, SIGKILLs the worker's
# process and waits for Docker to restart it, and trains a second class on the restarted worker.
#
# Where Docker Hub is out of reach, STAND_INS=1 (the default) first builds stand-in base images
# from Debian packages (debootstrap + `docker import`; PostgreSQL and Redis from Debian) and hands
# them to the build and to compose. STAND_INS=0 uses python:3.11-slim, postgres:18 and redis:7.
#
# Environment:
#   STAND_INS=1|0      build and use the stand-in base images (default 1)
#   TORCH_INDEX        torch wheel index for the build. Default with stand-ins: PyPI (its torch
#                      is the CUDA build, multi-GB); without: the Dockerfile's CPU index.
#   SMOKE_DIR          work directory (default: a new one under /tmp)
#   REPO               the repository to clone (default: the one holding this script)
#   SMOKE_PORT         host port of the API (default 18000, bound to 127.0.0.1)
#   KEEP=1             leave the compose stack running at the end
# Needs: docker (daemon + CLI), git, curl; debootstrap for stand-ins; for the compose steps the
# compose plugin v2.24+ (without it they are skipped, and said so).
set -euo pipefail

REPO=${REPO:-$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)}
STAND_INS=${STAND_INS:-1}
SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d /tmp/liteembed-smoke.XXXXXX)}
SMOKE_PORT=${SMOKE_PORT:-18000}
PROJECT=liteembed-smoke
IMAGE=liteembed:smoke
STAND_IN_PREFIX=liteembed-stand-in
ADMIN_KEY=smoke-admin-key-0123456789
CLIENT_KEY=smoke-client-key-0123456789
API=http://127.0.0.1:${SMOKE_PORT}
# The classic builder: it needs no buildx plugin, and compose reuses its cache.
export DOCKER_BUILDKIT=0

say() { printf '\n=== %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll every 2 s until COMMAND succeeds
  local limit=$1 what=$2 start
  shift 2
  start=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) - start >= limit)); then
      printf '%s: not within %ss\n' "$what" "$limit" >&2
      return 1
    fi
    sleep 2
  done
  printf '%s after %ss\n' "$what" "$(($(date +%s) - start))"
}

docker version --format 'docker client {{.Client.Version}}, daemon {{.Server.Version}}' \
  || fail "no Docker daemon reachable"

# Compose is needed only for the stack's steps, which come last: without it (or with one older
# than v2.24, whose env_file cannot be optional) the build and `docker run` steps still run.
compose_ok() {
  local version
  version=$(docker compose version --short 2>/dev/null) || return 1
  version=${version#v}
  # At least 2.24.0: it sorts first of the two.
  [[ $(printf '%s\n2.24.0\n' "$version" | sort -V | head -1) == 2.24.0 ]]
}

build_stand_ins() {
  local base=$STAND_IN_PREFIX/python:3.11-bookworm rootfs=$SMOKE_DIR/rootfs
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    say "stand-in base: debootstrap Debian bookworm with python3.11 -> $base"
    command -v debootstrap >/dev/null || fail "debootstrap is not installed"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" http://deb.debian.org/debian >"$SMOKE_DIR/debootstrap.log" 2>&1 \
      || fail "debootstrap failed (see $SMOKE_DIR/debootstrap.log)"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    # The stand-in trusts what this host trusts (a TLS-intercepting proxy's CA included), so pip
    # inside the build reaches the package index the way the host's pip does.
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
      cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    tar -C "$rootfs" -c . | docker import --change 'CMD ["python3"]' \
      --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$base"
    rm -rf "$rootfs"
  fi
  local name
  for name in postgres redis; do
    if ! docker image inspect "$STAND_IN_PREFIX/$name" >/dev/null 2>&1; then
      say "stand-in $name image from Debian packages"
      docker build --network host --build-arg DEBIAN_IMAGE="$base" -t "$STAND_IN_PREFIX/$name" \
        -f "$REPO/scripts/stand-ins/$name.Dockerfile" "$REPO/scripts/stand-ins"
    fi
  done
  BASE_IMAGE=$base
  POSTGRES_IMAGE=$STAND_IN_PREFIX/postgres
  REDIS_IMAGE=$STAND_IN_PREFIX/redis
  TORCH_INDEX=${TORCH_INDEX:-https://pypi.org/simple}
}

BUILD_ARGS=()
if [[ $STAND_INS == 1 ]]; then
  build_stand_ins
  BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  export BASE_IMAGE POSTGRES_IMAGE REDIS_IMAGE
fi
if [[ -n ${TORCH_INDEX:-} ]]; then
  BUILD_ARGS+=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
  export TORCH_INDEX
fi

say "clean clone of $(git -C "$REPO" rev-parse --short HEAD) into $SMOKE_DIR/repo"
rm -rf "$SMOKE_DIR/repo"
git clone --quiet "$REPO" "$SMOKE_DIR/repo"
cd "$SMOKE_DIR/repo"

say "docker build (${BUILD_ARGS[*]})"
start=$(now)
# Host network: the build's pip must reach the package index whatever the daemon's bridge allows.
docker build --network host "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$SMOKE_DIR/build.log" 2>&1 \
  || { tail -30 "$SMOKE_DIR/build.log"; fail "docker build"; }
BUILD_S=$(elapsed "$start")
echo "build: ${BUILD_S}s"

say "rebuild after a code edit"
echo "# smoke check: a code edit" >>service/main.py
start=$(now)
docker build --network host "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$SMOKE_DIR/rebuild.log" 2>&1 \
  || { tail -30 "$SMOKE_DIR/rebuild.log"; fail "docker rebuild"; }
REBUILD_S=$(elapsed "$start")
echo "rebuild: ${REBUILD_S}s (steps run again: $(grep -c -- '---> Running in' "$SMOKE_DIR/rebuild.log"))"
SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "image size: $((SIZE / 1000000)) MB"
docker history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" |
  sed -E 's/\t\|[0-9]+ ([A-Z_]+=[^ ]* )+/\t/; s|/bin/sh -c (#\(nop\) )?||; s/(COPY )(dir|file|multi):[0-9a-f]+ /\1/' |
  awk -F'\t' '$1 !~ /^0B$/ { printf "  %8s  %s\n", $1, substr($2, 1, 80) }'
docker run --rm "$IMAGE" python -c \
  "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

say "docker run $IMAGE without keys: refuses to serve open on 0.0.0.0"
if refused=$(docker run --rm "$IMAGE" 2>&1); then fail "docker run without keys served open"; fi
grep -q "no API keys configured" <<<"$refused" || { echo "$refused" | tail -5; fail "unclear refusal"; }
echo "$refused" | head -2

say "docker run $IMAGE (an admin key only)"
run_id=$(docker run -d -e "LITEEMBED_ADMIN_KEYS=$ADMIN_KEY" "$IMAGE")
healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "$1") == healthy ]]; }
running() { [[ $(docker inspect -f '{{.State.Running}}' "$1") == true ]]; }
wait_for 600 "docker run: healthy" healthy "$run_id" \
  || { docker logs "$run_id" 2>&1 | tail -30; fail "docker run never became healthy"; }
running "$run_id" || fail "the container exited"
docker exec "$run_id" ls -l /data
docker logs "$run_id" 2>&1 | tail -8
docker rm -f "$run_id" >/dev/null

if ! compose_ok; then
  say "SMOKE PASSED (image and docker run); compose steps SKIPPED: they need docker compose v2.24+"
  printf 'image %s: %s MB; build %ss; rebuild after a code edit %ss\n' \
    "$IMAGE" "$((SIZE / 1000000))" "$BUILD_S" "$REBUILD_S"
  exit 0
fi

say "docker compose up"
cat >.env <<EOF
LITEEMBED_ADMIN_KEYS=$ADMIN_KEY
LITEEMBED_CLIENT_KEYS=$CLIENT_KEY
LITEEMBED_TORCH_THREADS=1
LITEEMBED_IMAGE=$IMAGE
API_PUBLISH_PORT=$SMOKE_PORT
EOF
compose() { docker compose -p "$PROJECT" "$@"; }
cleanup() {
  if [[ ${KEEP:-0} != 1 ]]; then compose down -v --remove-orphans >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
echo "images: $(compose config --images | sort -u | tr '\n' ' ')"
start=$(now)
compose up -d
api_healthy() { healthy "$(compose ps -q api)"; }
worker_healthy() { healthy "$(compose ps -q worker)"; }
stack_logs() { compose ps -a; compose logs --tail 20; }
wait_for 900 "compose: api healthy" api_healthy || { stack_logs; fail "api never healthy"; }
wait_for 300 "compose: worker healthy" worker_healthy || { stack_logs; fail "worker never healthy"; }
echo "stack up in $(elapsed "$start")s"
compose ps -a --format 'table {{.Service}}\t{{.Status}}\t{{.Ports}}'
echo "--- preload log"
compose logs --no-log-prefix preload | tail -6
echo "--- /readyz"
curl -fsS "$API/readyz"
echo

say "register -> ready -> classify over HTTP"
docker run --rm "$IMAGE" python -c '
import io, sys, tarfile
from testbed import default_world
world = default_world()
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
    for name, n, seed in (("coin", 4, 31337), ("badge", 4, 31338), ("coin-test", 1, 41337)):
        for i, image in enumerate(world.render([name.split("-")[0]], n=n, seed=seed)):
            data = io.BytesIO()
            image.save(data, format="PNG")
            info = tarfile.TarInfo(f"{name}{i}.png")
            info.size = data.tell()
            data.seek(0)
            tar.addfile(info, data)
' | tar -x -C "$SMOKE_DIR"
auth=(-H "Authorization: Bearer $CLIENT_KEY")
register() { # register NAME -> class id
  curl -fsS "${auth[@]}" -X POST "$API/v1/classes" -F "name=$1" \
    -F "images=@$SMOKE_DIR/${1}0.png" -F "images=@$SMOKE_DIR/${1}1.png" \
    -F "images=@$SMOKE_DIR/${1}2.png" -F "images=@$SMOKE_DIR/${1}3.png" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'
}
status_of() { curl -fsS "${auth[@]}" "$API/v1/classes/$1"; }
is_ready() { status_of "$1" | grep -q '"status":"ready"'; }
coin=$(register coin)
echo "registered coin: $coin"
start=$(now)
wait_for 900 "coin ready" is_ready "$coin" || { stack_logs; fail "coin never ready"; }
status_of "$coin"
echo
curl -fsS "${auth[@]}" -X POST "$API/v1/classify" -F "image=@$SMOKE_DIR/coin-test0.png" \
  -F top_k=3
echo

say "SIGKILL the worker's process; Docker restarts it"
worker=$(compose ps -q worker)
before=$(docker inspect -f '{{.RestartCount}}' "$worker")
kill -9 "$(docker inspect -f '{{.State.Pid}}' "$worker")"
restarted() { (($(docker inspect -f '{{.RestartCount}}' "$worker") > before)) && running "$worker"; }
wait_for 120 "worker restarted" restarted || { stack_logs; fail "worker not restarted"; }
wait_for 300 "restarted worker healthy" healthy "$worker" || { stack_logs; fail "worker unhealthy"; }
docker inspect -f 'restart count {{.RestartCount}}, status {{.State.Status}}, health {{.State.Health.Status}}' "$worker"
badge=$(register badge)
echo "registered badge: $badge"
wait_for 900 "badge ready (trained by the restarted worker)" is_ready "$badge" \
  || { stack_logs; fail "badge never ready"; }
curl -fsS "$API/metrics" | grep -E '^liteembed_(classes|queue_depth|workers)' || true

say "SMOKE PASSED"
printf 'image %s: %s MB; build %ss; rebuild after a code edit %ss\n' \
  "$IMAGE" "$((SIZE / 1000000))" "$BUILD_S" "$REBUILD_S"
