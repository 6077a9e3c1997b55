#!/usr/bin/env bash
# Regenerate the Python code of proto/ with the pinned grpcio-tools (constraints.txt).
# tests/test_proto_codegen.py runs this into a temporary folder and checks for no diff.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/proto/src}"
python -m grpc_tools.protoc -I"$root/proto/src" --python_out="$out" --pyi_out="$out" \
  "$root/proto/src/raycg/proto/plan.proto"
