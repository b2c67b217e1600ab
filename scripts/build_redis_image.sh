#!/usr/bin/env bash
# Builds a small Redis image locally, with no base image and no registry: FROM scratch with the
# host's Debian redis-server binary and exactly the shared libraries ldd lists for it.
#   scripts/build_redis_image.sh [TAG]     (default: $REDIS_IMAGE or llm-proxy/redis:local)
# Installs Debian's redis-server package first when the binary is missing (needs root and apt).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-${REDIS_IMAGE:-llm-proxy/redis:local}}

if ! command -v redis-server >/dev/null; then
  echo "redis-server not found: installing Debian's redis-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
binary=$(readlink -f "$(command -v redis-server)")  # Debian: redis-server -> redis-check-rdb
version=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/bin" "$root/etc" "$ctx/data"
mkdir -m 1777 "$root/tmp"
# The binary picks its role from argv[0], so it must be called redis-server in the image.
cp "$binary" "$root/usr/bin/redis-server"

# Every library ldd resolves ("name => /path (addr)") and the loader ("/path (addr)"), copied to
# the path ldd prints, dereferenced (Debian's /lib is a symlink to /usr/lib).
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u |
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done

printf 'root:x:0:0:root:/root:/sbin/nologin\nredis:x:999:999:redis:/data:/sbin/nologin\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nredis:x:999:\n' >"$root/etc/group"
cp scripts/redis-image/Dockerfile "$ctx/Dockerfile"

# The classic builder: BuildKit needs the buildx plugin, which Debian's docker.io lacks.
if ! DOCKER_BUILDKIT=0 docker build --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.description=redis-server $version from Debian, FROM scratch" \
  -t "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  exit 1
fi
# Smoke test: the binary starts with the staged libraries.
docker run --rm "$tag" redis-server --version >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "built $tag: redis $version, $((size / 1024 / 1024)) MiB"
