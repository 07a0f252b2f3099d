#!/usr/bin/env bash
# Regenerate the committed gRPC stubs from appliance/wire/sealagg.proto (needs the dev extra).
# The folder is mapped onto its import name (-Isealagg/appliance/wire=appliance/wire), so the
# stubs import sealagg.appliance.wire; protoc writes them under that name, then they move home.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$PY" -P -m grpc_tools.protoc -Isealagg/appliance/wire=appliance/wire \
    --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
    sealagg/appliance/wire/sealagg.proto
cp "$out"/sealagg/appliance/wire/sealagg_pb2.py "$out"/sealagg/appliance/wire/sealagg_pb2_grpc.py \
    "$out"/sealagg/appliance/wire/sealagg_pb2.pyi appliance/wire/
