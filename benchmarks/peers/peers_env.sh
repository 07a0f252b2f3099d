#!/usr/bin/env bash
# Create (or refresh) .venv-peers, the benchmark-only peer environment: exactly
# benchmarks/peers/lock.txt (flwr 1.42.0 with its simulation engine, torch 2.13.0 CPU, byzfl;
# every package pinned with its hash), then `pip check` and an import probe.
# `./run bench` (benchmarks/harness/runner.py) calls it before the peers run; by hand:
#   benchmarks/peers/peers_env.sh
# Idempotent and fast when up to date (a stamp holds the hash of the lock and this script); when
# either changed the venv is made anew, so nothing outside the lock survives in it. Fails loudly.
#
# Why one venv for Flower's SecAgg+ and the robust aggregators (Flower's, ByzFL's): the lock
# resolves without conflict, and one pinned environment keeps every peer on the same numpy and
# OpenBLAS. Why not the project venv: flwr pins protobuf<7 and grpcio versions that conflict with
# ours, and byzfl's `torch>=2.2` would let a resolver pull a CUDA torch; here torch is the locked
# CPU wheel (from the local wheel folder, as scripts/lock.sh and scripts/flower_env.sh use), and
# --no-deps --require-hashes refuses any file that is not the locked one. Nothing is downloaded
# when the benchmarks run: only here, from the lock.
#
# torchvision is left out on purpose. byzfl's metadata requires it and byzfl/__init__.py imports
# it (for its training benchmark), but the only torchvision 0.28.0 wheel the package index has
# (the release for torch 2.13) links CUDA: beside the CPU torch its ops fail to register and
# `import torchvision` raises ("operator torchvision::nms does not exist"); the PyTorch CPU index
# is not reachable here. ByzFL's aggregators need numpy, torch and scipy only, and robust_peers.py
# loads `byzfl.aggregators` without running byzfl/__init__.py. So `pip check` may name exactly
# one problem, byzfl's missing torchvision; any other line fails this script.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python3.11}
VENV=.venv-peers
LOCK=benchmarks/peers/lock.txt
STAMP="$VENV/.sealagg-peers-locked"

want=$(cat "$LOCK" benchmarks/peers/peers_env.sh | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
echo "[peers] creating $VENV from $LOCK (flwr, ray, torch CPU, byzfl: a few minutes, once)"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-deps --require-hashes \
    --find-links "${TORCH_WHEELS:-/opt/wheels}" -r "$LOCK" \
    2> >(grep -v "is ignored: it is neither a file" >&2)
known="byzfl [0-9.]+ requires torchvision, which is not installed\."
problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -v -x -E "$known" || true)
if [ -n "$problems" ] && [ "$problems" != "No broken requirements found." ]; then
    echo "$problems" >&2
    exit 1
fi
# What the peer scripts import: Flower's engine, the CPU torch, ByzFL's aggregators (loaded as
# robust_peers.py does, without byzfl/__init__.py and so without torchvision).
"$VENV/bin/python" -P -c '
import importlib, importlib.util, sys
import flwr.simulation, ray, scipy, torch
assert torch.__version__.endswith("+cpu") and not torch.cuda.is_available(), torch.__version__
sys.modules["byzfl"] = importlib.util.module_from_spec(importlib.util.find_spec("byzfl"))
importlib.import_module("byzfl.aggregators").Krum
print("[peers] flwr", flwr.__version__, "torch", torch.__version__, "ray", ray.__version__)
'
echo "$want" > "$STAMP"
