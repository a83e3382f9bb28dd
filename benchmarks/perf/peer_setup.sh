#!/usr/bin/env bash
# A separate virtual environment for the peer server the `peer` part of `python -m benchmarks.perf`
# measures side by side (Infinity), so that its pins never touch the project's .venv:
#
#   bash benchmarks/perf/peer_setup.sh [PYTHON]      # default: python3.11; builds .venv-peer/
#
# torch and torchvision go in first, at the project's pins (constraints.txt), so the peer runs the
# same torch as the bare model and our server; then Infinity with its server, torch and vision
# extras, and aiohttp (its image path imports it, and none of those extras pulls it in).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${1:-python3.11}"
INFINITY_VERSION=0.0.78
pin() { grep -i -E "^$1==" constraints.txt | head -1; }
"$PYTHON" -m venv .venv-peer
.venv-peer/bin/python -m pip install --upgrade pip
.venv-peer/bin/python -m pip install "$(pin torch)" "$(pin torchvision)"
.venv-peer/bin/python -m pip install "$(pin torch)" "$(pin torchvision)" \
  "infinity-emb[server,torch,vision]==${INFINITY_VERSION}" aiohttp
.venv-peer/bin/infinity_emb --help >/dev/null
echo "peer environment ready: .venv-peer/bin/infinity_emb (infinity-emb ${INFINITY_VERSION})"
