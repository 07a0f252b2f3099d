#!/usr/bin/env bash
# Regenerate the committed gRPC stubs from appliance/wire/sealagg.proto (needs the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. appliance/wire/sealagg.proto
