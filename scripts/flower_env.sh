#!/usr/bin/env bash
# Create (or refresh) .venv-flower: exactly requirements/lock-flower.txt (flwr 1.42.0 with its
# simulation engine, torch 2.13.0 CPU, every package pinned with its hash), then sealagg's
# transport-free packages (sealagg.crypto, sealagg.kernels, sealagg.flower), then `pip check`.
# Idempotent: reinstalls only when the lock or this script changes. Fails loudly.
#   scripts/flower_env.sh        (./run test calls it)
#
# Why sealagg is not pip-installed here: its distribution metadata requires protobuf>=7 (the
# appliance's gRPC stubs), which Flower 1.42 forbids, so `pip check` could never pass. Instead a
# .pth file puts a folder on sys.path whose `sealagg/` holds links to crypto/, kernels/ and
# flower/ only: in this environment `sealagg.appliance` and `sealagg.client_shim` do not exist,
# which also proves sealagg.flower never needs them.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv-flower
LOCK=requirements/lock-flower.txt
ROOT=$(pwd)

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.sealagg-flower-installed"
# The checkout's path is in the stamp too: the .pth file below points into it.
want=$( (cat "$LOCK" scripts/flower_env.sh; echo "$ROOT") | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -f "$stamp"
    "$VENV/bin/python" -m pip install --quiet --no-deps --require-hashes -r "$LOCK" \
        2> >(grep -v "is ignored: it is neither a file" >&2)
    src="$ROOT/$VENV/sealagg-src"
    rm -rf "$src"
    mkdir -p "$src/sealagg"
    for pkg in crypto kernels flower; do
        ln -s "$ROOT/$pkg" "$src/sealagg/$pkg"
    done
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$src" > "$site/sealagg-flower.pth"
    "$VENV/bin/python" -m pip check
    "$VENV/bin/python" -P -c 'import torch, sealagg.flower; sealagg.flower.check_flower_api()'
    echo "$want" > "$stamp"
fi
