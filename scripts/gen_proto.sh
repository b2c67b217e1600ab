#!/usr/bin/env bash
# Generates the Python gRPC code for proto/*.proto into adapters/inbound/grpc/generated.
# With --check, generates into a temporary folder and fails if the committed code differs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=adapters/inbound/grpc/generated
target=$out
if [[ "${1:-}" == "--check" ]]; then
  target=$(mktemp -d)
  trap 'rm -rf "$target"' EXIT
fi
python -m grpc_tools.protoc -I proto \
  --python_out="$target" --grpc_python_out="$target" \
  --mypy_out="$target" --mypy_grpc_out="$target" proto/proxy.proto
# protoc writes top-level imports ("import proxy_pb2"); the package lives under adapters.inbound.grpc.generated.
sed -i "s/^import proxy_pb2 as /from adapters.inbound.grpc.generated import proxy_pb2 as /" "$target/proxy_pb2_grpc.py" "$target/proxy_pb2_grpc.pyi"
if [[ "${1:-}" == "--check" ]]; then
  for f in proxy_pb2.py proxy_pb2.pyi proxy_pb2_grpc.py proxy_pb2_grpc.pyi; do
    if ! diff -u "$out/$f" "$target/$f"; then
      echo "generated code is stale: run scripts/gen_proto.sh and commit $out" >&2
      exit 1
    fi
  done
  echo "generated gRPC code matches proto/"
fi
