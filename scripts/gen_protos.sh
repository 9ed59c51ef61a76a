#!/usr/bin/env bash
# Generate Python code from protos/ into detector/v1/ (git-ignored: produced by the build, never edited).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
OUT="${1:-.}"
"$PY" -m grpc_tools.protoc -Iprotos --python_out="$OUT" --grpc_python_out="$OUT" --pyi_out="$OUT" \
    protos/detector/v1/detector.proto
