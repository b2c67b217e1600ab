#!/usr/bin/env bash
# Builds the llm-proxy image (`make image`):  scripts/build_image.sh [TAG]   (default llm-proxy:dev)
# The Dockerfile's bases are the public images BUILDER_IMAGE and RUNTIME_IMAGE (override either by
# environment). When they are neither present nor pullable (no registry), Debian 12 stand-ins are
# assembled locally by scripts/build_base_images.sh, once, and used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-${IMAGE:-llm-proxy:dev}}
builder=${BUILDER_IMAGE:-python:3.11-slim-bookworm}
runtime=${RUNTIME_IMAGE:-gcr.io/distroless/python3-debian12}
local_builder=llm-proxy/python-builder:bookworm
local_runtime=llm-proxy/python-runtime:bookworm

note() { echo "build_image: $*" >&2; }
available() {
  docker image inspect "$1" >/dev/null 2>&1 && return 0
  timeout 120 docker pull -q "$1" >/dev/null 2>&1
}

if ! available "$builder" || ! available "$runtime"; then
  note "$builder or $runtime cannot be pulled: using Debian 12 bases built locally"
  LOCAL_BUILDER_IMAGE=$local_builder LOCAL_RUNTIME_IMAGE=$local_runtime scripts/build_base_images.sh
  builder=$local_builder runtime=$local_runtime
fi

note "building $tag from $builder and $runtime"
# The classic builder: BuildKit needs the buildx plugin, which Debian's docker.io lacks.
DOCKER_BUILDKIT=0 docker build -q --build-arg "BUILDER_IMAGE=$builder" \
  --build-arg "RUNTIME_IMAGE=$runtime" \
  --label "org.opencontainers.image.revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  -t "$tag" . >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "built $tag: $((size / 1024 / 1024)) MiB (bases: $builder, $runtime)"
