#!/bin/sh
# Like the official image: redis-server runs as user redis, reachable from the other containers
# (no protected mode: the network is the boundary).
set -eu
if [ "$1" = redis-server ]; then
  shift
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups \
    redis-server --protected-mode no "$@"
fi
exec "$@"
